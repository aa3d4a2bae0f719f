//! What the fuzz targets in tests/fuzz reach that a feature-lean build would not compile:
//! the AWS packer (NDJSON + gzip/zstd) without the AWS SDK. Not an API.

#[cfg(feature = "aws-common")]
pub use crate::exporters::aws::packer;

// The same source file, compiled on its own when the SDK is left out (feature "fuzzing").
#[cfg(all(feature = "fuzzing", not(feature = "aws-common")))]
#[path = "exporters/aws/packer.rs"]
pub mod packer;
