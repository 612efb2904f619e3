//! One plaintext connection to a Kafka broker: size-prefixed requests and responses
//! (kafka-protocol encodes and decodes them), the API versions the broker supports, and
//! timeouts on every read and write so a broker that stops answering is noticed.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::ops::RangeInclusive;
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use kafka_protocol::messages::{ApiVersionsRequest, RequestHeader, ResponseHeader};
use kafka_protocol::protocol::{Decodable, Encodable, HeaderVersion, Request, StrBytes};

use super::FetchError;

/// The largest response accepted: a fetch answers at most `fetch.max.bytes` plus headers; this
/// only guards against reading a garbage size prefix.
const MAX_RESPONSE: usize = 1 << 30;

pub struct Connection {
    address: String,
    stream: TcpStream,
    client_id: StrBytes,
    correlation: i32,
    /// API key → (min, max) version the broker supports.
    versions: BTreeMap<i16, (i16, i16)>,
}

impl Connection {
    /// Connects to `address` (`host:port`) and asks which API versions the broker supports.
    pub fn open(address: &str, client_id: &str, connect_timeout: Duration, io_timeout: Duration) -> Result<Connection, FetchError> {
        let unreachable = |detail: String| FetchError::Retriable(format!("connecting to Kafka broker {address}: {detail}"));
        let addresses = address.to_socket_addrs().map_err(|e| unreachable(e.to_string()))?;
        let mut last = String::from("the address resolves to nothing");
        let mut connected = None;
        for socket in addresses {
            match TcpStream::connect_timeout(&socket, connect_timeout) {
                Ok(stream) => {
                    connected = Some(stream);
                    break;
                }
                Err(error) => last = error.to_string(),
            }
        }
        let stream = connected.ok_or_else(|| unreachable(last))?;
        let configure = |stream: &TcpStream| -> std::io::Result<()> {
            stream.set_nodelay(true)?;
            stream.set_read_timeout(Some(io_timeout))?;
            stream.set_write_timeout(Some(io_timeout))
        };
        configure(&stream).map_err(|e| unreachable(e.to_string()))?;
        let mut connection =
            Connection { address: address.to_string(), stream, client_id: StrBytes::from_string(client_id.to_string()), correlation: 0, versions: BTreeMap::new() };
        // Version 0 of ApiVersions is answered by every broker since 0.10.
        let versions = connection.call(0, &ApiVersionsRequest::default())?;
        if versions.error_code != 0 {
            return Err(FetchError::Fatal(format!("Kafka broker {address} refused ApiVersions (error code {})", versions.error_code)));
        }
        connection.versions = versions.api_keys.iter().map(|v| (v.api_key, (v.min_version, v.max_version))).collect();
        Ok(connection)
    }

    pub fn address(&self) -> &str {
        &self.address
    }

    /// The newest version of `R` both sides speak, within `ours`.
    pub fn version<R: Request>(&self, ours: RangeInclusive<i16>) -> Result<i16, FetchError> {
        let (min, max) = self.versions.get(&R::KEY).copied().unwrap_or((0, -1));
        let version = max.min(*ours.end());
        if version < min.max(*ours.start()) {
            return Err(FetchError::Fatal(format!(
                "Kafka broker {} speaks versions {min}..={max} of API {}, the native fetch needs {}..={}: set `fetch = \"librdkafka\"` under [source]",
                self.address,
                R::KEY,
                ours.start(),
                ours.end()
            )));
        }
        Ok(version)
    }

    /// Sends `request` and waits for its response.
    pub fn call<R: Request>(&mut self, version: i16, request: &R) -> Result<R::Response, FetchError> {
        let correlation = self.send(version, request)?;
        self.receive::<R>(version, correlation)
    }

    /// Sends `request` without waiting; returns its correlation id for [`Self::receive`].
    pub fn send<R: Request>(&mut self, version: i16, request: &R) -> Result<i32, FetchError> {
        self.correlation = self.correlation.wrapping_add(1);
        let header = RequestHeader::default()
            .with_request_api_key(R::KEY)
            .with_request_api_version(version)
            .with_correlation_id(self.correlation)
            .with_client_id(Some(self.client_id.clone()));
        let header_version = R::header_version(version);
        let encoding = |e: String| FetchError::Fatal(format!("encoding a request of API {} v{version}: {e}", R::KEY));
        let size = header.compute_size(header_version).map_err(|e| encoding(chain(e)))? + request.compute_size(version).map_err(|e| encoding(chain(e)))?;
        let mut buffer = BytesMut::with_capacity(4 + size);
        buffer.put_i32(i32::try_from(size).map_err(|_| FetchError::Fatal(format!("a request of {size} bytes")))?);
        header.encode(&mut buffer, header_version).map_err(|e| encoding(chain(e)))?;
        request.encode(&mut buffer, version).map_err(|e| encoding(chain(e)))?;
        self.stream.write_all(&buffer).map_err(|e| self.lost("sending a request", e))?;
        Ok(self.correlation)
    }

    /// Waits for the response to the request sent as `correlation`. A fetch response's record
    /// data are slices of its bytes (kafka-protocol decodes `Bytes` without copying).
    pub fn receive<R: Request>(&mut self, version: i16, correlation: i32) -> Result<R::Response, FetchError> {
        let mut size = [0u8; 4];
        self.stream.read_exact(&mut size).map_err(|e| self.lost("reading a response", e))?;
        let size = usize::try_from(i32::from_be_bytes(size)).ok().filter(|size| *size <= MAX_RESPONSE).ok_or_else(|| {
            FetchError::Retriable(format!("Kafka broker {} sent a response size of {}", self.address, i32::from_be_bytes(size)))
        })?;
        // Read into spare capacity: a fetch response is megabytes that need no zeroing first.
        let mut body = Vec::with_capacity(size);
        let read = (&mut self.stream).take(size as u64).read_to_end(&mut body).map_err(|e| self.lost("reading a response", e))?;
        if read < size {
            return Err(self.lost("reading a response", std::io::ErrorKind::UnexpectedEof.into()));
        }
        let mut rest = Bytes::from(body);
        let garbled = |what: &str, e: String| FetchError::Retriable(format!("Kafka broker {} sent a garbled {what} (API {} v{version}): {e}", self.address, R::KEY));
        let header = ResponseHeader::decode(&mut rest, R::Response::header_version(version)).map_err(|e| garbled("response header", chain(e)))?;
        if header.correlation_id != correlation {
            return Err(FetchError::Retriable(format!(
                "Kafka broker {} answered request {} when {correlation} was due",
                self.address, header.correlation_id
            )));
        }
        R::Response::decode(&mut rest, version).map_err(|e| garbled("response", chain(e)))
    }

    fn lost(&self, doing: &str, error: std::io::Error) -> FetchError {
        FetchError::Retriable(format!("{doing} from Kafka broker {}: {error}", self.address))
    }
}

/// An error with its causes, as kafka-protocol's errors print them in alternate form.
fn chain(error: impl std::fmt::Display) -> String {
    format!("{error:#}")
}
