//! Key pairs: ImportKeyPair of the build's ephemeral public key (named
//! after the build, recorded by name), and their deletion.

use aws_sdk_ec2::primitives::Blob;
use aws_sdk_ec2::types::ResourceType;
use opsbake_core::builder::{BuildContext, BuildError, Deleted, KeyPair, Made};

use super::{rid, tag_spec, AwsDeleter, KEY_PAIR};
use crate::error::{api, AwsError};
use crate::AwsBuilder;

impl AwsBuilder {
    /// Import the build's public key as the key pair `name`.
    pub(crate) async fn import_key_pair(
        &self,
        ctx: &BuildContext,
        name: &str,
        key: &KeyPair,
    ) -> Result<(), BuildError> {
        let region = self.region.as_str();
        let ec2 = self.clients.ec2(region).await?;
        ctx.create_resource(
            KEY_PAIR,
            name,
            serde_json::json!({ "region": region }),
            |token| async move {
                let tags = self.tags(ctx, &token, name);
                ec2.import_key_pair()
                    .key_name(name)
                    .public_key_material(Blob::new(key.public_openssh.as_bytes()))
                    .tag_specifications(tag_spec(ResourceType::KeyPair, &tags))
                    .send()
                    .await
                    .map_err(api("ImportKeyPair", region, Some(name)))?;
                Ok::<_, AwsError>(
                    Made::new(rid(region, name), ())
                        .with_data(serde_json::json!({ "region": region })),
                )
            },
        )
        .await?;
        Ok(())
    }
}

impl AwsDeleter {
    pub(crate) async fn delete_key_pair(
        &self,
        region: &str,
        name: &str,
    ) -> Result<Deleted, AwsError> {
        let ec2 = self.clients.ec2(region).await?;
        match ec2.describe_key_pairs().key_names(name).send().await {
            Ok(o) if o.key_pairs().is_empty() => return Ok(Deleted::AlreadyGone),
            Ok(_) => {}
            Err(e) => {
                let e = api("DescribeKeyPairs", region, Some(name))(e);
                if e.is_not_found() {
                    return Ok(Deleted::AlreadyGone);
                }
                return Err(e);
            }
        }
        ec2.delete_key_pair()
            .key_name(name)
            .send()
            .await
            .map_err(api("DeleteKeyPair", region, Some(name)))?;
        Ok(Deleted::Now)
    }
}
