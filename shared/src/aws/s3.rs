//! S3: click files come in, rejects reports go out.

use aws_sdk_s3::Client;
use aws_sdk_s3::primitives::ByteStream;
use tokio::io::AsyncRead;

use super::AwsError;

/// What the slicer needs to know about an object before reading it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectInfo {
    pub size: Option<i64>,
    /// Version id when the bucket is versioned, otherwise the ETag: the identity of these exact bytes.
    pub version: String,
    pub content_encoding: Option<String>,
}

/// Which bytes of a key to read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ObjectVersion {
    /// Whatever the key holds now.
    Latest,
    /// A version of a versioned bucket.
    Version(String),
    /// The object as long as its ETag is still this one (an unversioned bucket keeps only the latest bytes).
    ETag(String),
}

#[derive(Clone)]
pub struct S3Objects {
    client: Client,
}

impl S3Objects {
    pub fn new(client: Client) -> Self {
        Self { client }
    }

    pub fn client(&self) -> &Client {
        &self.client
    }

    /// A link that reads the object, signed with this client's credentials and good for `valid_for` (an S3
    /// presigned GET): handed to a browser, it fetches the object from S3 directly. Signing is local: no request
    /// is made.
    pub async fn presigned_get(
        &self,
        bucket: &str,
        key: &str,
        valid_for: std::time::Duration,
    ) -> Result<String, AwsError> {
        let request = self
            .client
            .get_object()
            .bucket(bucket)
            .key(key)
            .presigned(presigning(valid_for)?)
            .await
            .map_err(|e| AwsError::from_sdk("s3 GetObject presigning", e))?;
        Ok(request.uri().to_string())
    }

    /// A link that writes the object with one PUT, signed like [`Self::presigned_get`]: a browser uploads a file
    /// straight into the bucket.
    pub async fn presigned_put(
        &self,
        bucket: &str,
        key: &str,
        valid_for: std::time::Duration,
    ) -> Result<String, AwsError> {
        let request = self
            .client
            .put_object()
            .bucket(bucket)
            .key(key)
            .presigned(presigning(valid_for)?)
            .await
            .map_err(|e| AwsError::from_sdk("s3 PutObject presigning", e))?;
        Ok(request.uri().to_string())
    }

    /// Opens the latest object as a stream: bytes arrive as they are read, the object is never held whole.
    pub async fn open(
        &self,
        bucket: &str,
        key: &str,
    ) -> Result<(ObjectInfo, impl AsyncRead + Send + Unpin + 'static), AwsError> {
        match self.open_version(bucket, key, &ObjectVersion::Latest).await? {
            Some(opened) => Ok(opened),
            None => Err(AwsError { operation: "s3 GetObject", message: format!("{key} is gone") }),
        }
    }

    /// Opens exactly the bytes `version` names as a stream; `None` when they are no longer there (the version was
    /// deleted, or an unversioned object was overwritten since: its ETag no longer matches).
    pub async fn open_version(
        &self,
        bucket: &str,
        key: &str,
        version: &ObjectVersion,
    ) -> Result<Option<(ObjectInfo, impl AsyncRead + Send + Unpin + 'static)>, AwsError> {
        let request = self.client.get_object().bucket(bucket).key(key);
        let request = match version {
            ObjectVersion::Latest => request,
            ObjectVersion::Version(id) => request.version_id(id),
            ObjectVersion::ETag(etag) => request.if_match(format!("\"{}\"", etag.trim_matches('"'))),
        };
        let out = match request.send().await {
            Ok(out) => out,
            Err(e) => {
                let status = e.raw_response().map(|r| r.status().as_u16());
                let gone = match version {
                    ObjectVersion::Latest => false,
                    ObjectVersion::Version(_) => status == Some(404),
                    ObjectVersion::ETag(_) => status == Some(412),
                };
                if gone {
                    return Ok(None);
                }
                return Err(AwsError::from_sdk("s3 GetObject", e));
            }
        };
        let info = ObjectInfo {
            size: out.content_length(),
            version: out.version_id().or(out.e_tag()).unwrap_or_default().trim_matches('"').to_owned(),
            content_encoding: out.content_encoding().map(str::to_owned),
        };
        Ok(Some((info, out.body.into_async_read())))
    }

    pub async fn get_bytes(&self, bucket: &str, key: &str) -> Result<Vec<u8>, AwsError> {
        let out = self
            .client
            .get_object()
            .bucket(bucket)
            .key(key)
            .send()
            .await
            .map_err(|e| AwsError::from_sdk("s3 GetObject", e))?;
        let bytes = out
            .body
            .collect()
            .await
            .map_err(|e| AwsError { operation: "s3 GetObject body", message: e.to_string() })?;
        Ok(bytes.to_vec())
    }

    pub async fn put(
        &self,
        bucket: &str,
        key: &str,
        body: impl Into<ByteStream>,
        content_type: &str,
    ) -> Result<(), AwsError> {
        self.client
            .put_object()
            .bucket(bucket)
            .key(key)
            .content_type(content_type)
            .body(body.into())
            .send()
            .await
            .map_err(|e| AwsError::from_sdk("s3 PutObject", e))?;
        Ok(())
    }

    pub async fn create_bucket(&self, bucket: &str) -> Result<(), AwsError> {
        match self.client.create_bucket().bucket(bucket).send().await {
            Ok(_) => Ok(()),
            Err(e) if e.as_service_error().is_some_and(|s| s.is_bucket_already_owned_by_you()) => Ok(()),
            Err(e) => Err(AwsError::from_sdk("s3 CreateBucket", e)),
        }
    }
}

fn presigning(valid_for: std::time::Duration) -> Result<aws_sdk_s3::presigning::PresigningConfig, AwsError> {
    aws_sdk_s3::presigning::PresigningConfig::expires_in(valid_for)
        .map_err(|e| AwsError { operation: "s3 presigning", message: e.to_string() })
}
