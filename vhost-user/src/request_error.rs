//! Why a request is refused, and the wire status the guest sees for it.

use iommu_dev::{AccessError, RegError};

use crate::stream::StartError;
use crate::virtio_amdvi::Status;

/// A request the daemon refuses; [`RequestError::status`] is what the guest reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    #[error("shorter than its header")]
    Truncated,
    #[error("reserved field of the {0} is not zero")]
    Reserved(&'static str),
    #[error("unknown request type {0}")]
    UnknownType(u32),
    #[error("type {ty} has a {got}-byte body, not {want}")]
    BodyLength { ty: u32, got: usize, want: usize },
    #[error("type {ty} needs {need} bytes of response room, has {room}")]
    NoRoom { ty: u32, room: usize, need: usize },
    #[error("invalid {0}")]
    Invalid(&'static str),
    #[error("no endpoint {0:#06x}")]
    NoEndpoint(u16),
    #[error("PASID {0:#x} is wider than 16 bits")]
    PasidRange(u32),
    #[error("the IOMMU is not enabled")]
    NotReady,
    #[error("no stream {0}")]
    NoStream(u32),
    #[error("epoch counter at {0:#x} is outside guest RAM")]
    EpochOutsideRam(u64),
    #[error(transparent)]
    DeviceTable(#[from] RegError),
    #[error(transparent)]
    Stream(#[from] StartError),
    #[error(transparent)]
    Access(#[from] AccessError),
}

impl RequestError {
    /// The status of the response.
    pub fn status(&self) -> Status {
        use RequestError::*;
        match self {
            Truncated | Reserved(_) | BodyLength { .. } | NoRoom { .. } | Invalid(_) => {
                Status::BadRequest
            }
            UnknownType(_) => Status::Unsupported,
            NoEndpoint(_) | PasidRange(_) | NoStream(_) | EpochOutsideRam(_) => Status::OutOfRange,
            NotReady => Status::NotReady,
            DeviceTable(RegError::Reserved { .. }) => Status::BadRequest,
            DeviceTable(RegError::TableOutsideRam { .. }) => Status::OutOfRange,
            Stream(StartError::TooMany) => Status::NoResource,
            Stream(StartError::Spawn) => Status::DeviceError,
            Access(e) => access_status(e),
        }
    }
}

/// The status of a failed access.
pub fn access_status(e: &AccessError) -> Status {
    match e {
        AccessError::NotReady => Status::NotReady,
        AccessError::NoEndpoint(_) | AccessError::PasidRange(_) => Status::OutOfRange,
        AccessError::Fault { .. } | AccessError::AtcMiss { .. } => Status::TranslationFault,
        AccessError::PriTimeout { .. } => Status::Timeout,
        AccessError::Device { .. } | AccessError::Memory(_) => Status::DeviceError,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_are_the_wire_values() {
        let cases = [
            (RequestError::Truncated, 1),
            (RequestError::Reserved("header"), 1),
            (RequestError::UnknownType(99), 2),
            (RequestError::NotReady, 3),
            (RequestError::NoEndpoint(0x99), 4),
            (RequestError::NoStream(7), 4),
            (
                RequestError::DeviceTable(RegError::TableOutsideRam { base: 0, bytes: 0 }),
                4,
            ),
            (RequestError::Stream(StartError::TooMany), 8),
            (RequestError::Stream(StartError::Spawn), 9),
            (RequestError::Access(AccessError::NotReady), 3),
        ];
        for (e, want) in cases {
            assert_eq!(e.status() as u32, want, "{e}");
        }
    }
}
