//! The s3s project's file-system S3 server (`s3s-fs` 0.14.1: signature checks with one key pair,
//! objects kept as files) behind an accept loop that sets TCP_NODELAY on every connection.
//!
//! Why not s3s-fs's own binary: it leaves Nagle's algorithm on, so a response written in two
//! parts (headers, then body) waits for the client's delayed acknowledgement, ~40 ms on Linux, on
//! every small request. Production stores (AWS S3, MinIO) do not behave like that, and the
//! engine's sequential metadata requests made the warehouse on loopback look several times slower
//! than it is (`benches/README.md`, "The warehouse on S3 against local disk").

use clap::Parser;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto::Builder as ConnBuilder;
use s3s::auth::SimpleAuth;
use s3s::service::S3ServiceBuilder;
use s3s_fs::FileSystem;

#[derive(Debug, Parser)]
#[command(version)]
struct Options {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    #[arg(long, default_value_t = 9000)]
    port: u16,
    /// The one key pair requests must be signed with.
    #[arg(long)]
    access_key: String,
    #[arg(long)]
    secret_key: String,
    /// Folder holding the buckets (one folder each).
    root: std::path::PathBuf,
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let options = Options::parse();
    let file_system = FileSystem::new(&options.root).map_err(|e| format!("{}: {e:?}", options.root.display()))?;
    let mut builder = S3ServiceBuilder::new(file_system);
    builder.set_auth(SimpleAuth::from_single(options.access_key, options.secret_key));
    let service = builder.build();
    let listener = tokio::net::TcpListener::bind((options.host.as_str(), options.port)).await?;
    eprintln!("S3 server on http://{} serving {}", listener.local_addr()?, options.root.display());
    let http = ConnBuilder::new(TokioExecutor::new());
    loop {
        let (socket, _) = match listener.accept().await {
            Ok(connection) => connection,
            Err(error) => {
                eprintln!("accepting a connection failed: {error}");
                continue;
            }
        };
        socket.set_nodelay(true)?;
        let connection = http.serve_connection(TokioIo::new(socket), service.clone()).into_owned();
        tokio::spawn(async move {
            let _ = connection.await;
        });
    }
}
