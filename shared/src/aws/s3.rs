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

    /// Opens the object as a stream: bytes arrive as they are read, the object is never held whole.
    pub async fn open(
        &self,
        bucket: &str,
        key: &str,
    ) -> Result<(ObjectInfo, impl AsyncRead + Send + Unpin + 'static), AwsError> {
        let out = self
            .client
            .get_object()
            .bucket(bucket)
            .key(key)
            .send()
            .await
            .map_err(|e| AwsError::from_sdk("s3 GetObject", e))?;
        let info = ObjectInfo {
            size: out.content_length(),
            version: out.version_id().or(out.e_tag()).unwrap_or_default().trim_matches('"').to_owned(),
            content_encoding: out.content_encoding().map(str::to_owned),
        };
        Ok((info, out.body.into_async_read()))
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
