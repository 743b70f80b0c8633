//! Generated gRPC types for `paygate.v1`, and the codec they use.

#[allow(clippy::all, clippy::pedantic)]
pub mod v1 {
    tonic::include_proto!("paygate.v1");
}

/// Encoded descriptors of every paygate proto (and its imports), for server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/paygate_descriptor.bin"));

pub mod codec {
    //! prost's codec, except that a message that does not decode (bad UTF-8, a truncated field,
    //! a wrong wire type or length) is the sender's mistake: `INVALID_ARGUMENT`, not `INTERNAL`.

    use prost::Message;
    use tonic::{
        Status,
        codec::{BufferSettings, Codec, DecodeBuf, Decoder},
    };
    use tonic_prost::{ProstCodec, ProstDecoder, ProstEncoder};

    pub struct StrictCodec<T, U>(ProstCodec<T, U>);

    impl<T, U> Default for StrictCodec<T, U> {
        fn default() -> Self {
            Self(ProstCodec::default())
        }
    }

    impl<T, U> Codec for StrictCodec<T, U>
    where
        T: Message + Send + 'static,
        U: Message + Default + Send + 'static,
    {
        type Encode = T;
        type Decode = U;
        type Encoder = ProstEncoder<T>;
        type Decoder = StrictDecoder<U>;

        fn encoder(&mut self) -> Self::Encoder {
            self.0.encoder()
        }

        fn decoder(&mut self) -> Self::Decoder {
            StrictDecoder(self.0.decoder())
        }
    }

    pub struct StrictDecoder<U>(ProstDecoder<U>);

    impl<U: Message + Default> Decoder for StrictDecoder<U> {
        type Item = U;
        type Error = Status;

        fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<U>, Status> {
            self.0.decode(buf).map_err(|status| {
                let name = std::any::type_name::<U>().rsplit("::").next().unwrap_or("message");
                Status::invalid_argument(format!("the message is not a valid {name}: {}", status.message()))
            })
        }

        fn buffer_settings(&self) -> BufferSettings {
            self.0.buffer_settings()
        }
    }
}
