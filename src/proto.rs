//! Generated gRPC types for `paygate.v1`, and the codec they use.

#[allow(clippy::all, clippy::pedantic)]
pub mod v1 {
    tonic::include_proto!("paygate.v1");
}

/// Encoded descriptors of every paygate proto (and its imports), for server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/paygate_descriptor.bin"));

pub mod codec {
    //! prost's codec, except that a message that does not decode (bad UTF-8, a truncated field,
    //! a wrong wire type or length) is the sender's mistake: `INVALID_ARGUMENT`, not `INTERNAL`;
    //! and that a response starts with a small encode buffer.

    use prost::Message;
    use tonic::{
        Status,
        codec::{BufferSettings, Codec, DecodeBuf, Decoder, EncodeBuf, Encoder},
    };

    /// Every response (each open stream too) holds its encode buffer for as long as it lives.
    /// tonic's default is 8 KiB; paygate's messages fit in 2 KiB (a payment event with its signed
    /// hosted-page URL is about 1 KiB), and the buffer grows when one is larger. tonic's default
    /// yield threshold (32 KiB) is kept.
    const ENCODE_BUFFER_BYTES: usize = 2048;
    const YIELD_THRESHOLD_BYTES: usize = 32 * 1024;
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
        type Encoder = SmallEncoder<T>;
        type Decoder = StrictDecoder<U>;

        fn encoder(&mut self) -> Self::Encoder {
            SmallEncoder(self.0.encoder())
        }

        fn decoder(&mut self) -> Self::Decoder {
            StrictDecoder(self.0.decoder())
        }
    }

    pub struct SmallEncoder<T>(ProstEncoder<T>);

    impl<T: Message> Encoder for SmallEncoder<T> {
        type Item = T;
        type Error = Status;

        fn encode(&mut self, item: T, buf: &mut EncodeBuf<'_>) -> Result<(), Status> {
            self.0.encode(item, buf)
        }

        fn buffer_settings(&self) -> BufferSettings {
            BufferSettings::new(ENCODE_BUFFER_BYTES, YIELD_THRESHOLD_BYTES)
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
