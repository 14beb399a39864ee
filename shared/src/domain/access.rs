//! Who may change things through the management API: the names the template's Cognito resources and the API's
//! authorization share.

/// The Cognito group whose members may change things (any signed-in user may read).
pub const ADMIN_GROUP: &str = "admins";
/// The OAuth scope that lets a machine client change things.
pub const WRITE_SCOPE: &str = "clickpacer/write";
