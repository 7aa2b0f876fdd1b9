//! A small but real SMTP server and client (tokio + rustls), for the lab demo
//! and the test suite: the peers smtptap relays between when no Postfix is at
//! hand. They speak real SMTP over real sockets and real TLS; behaviours that
//! matter to troubleshooting (STARTTLS offered or not, refused, required,
//! recipients rejected) are switches.
//!
//! Nothing here is used by the proxy itself.

use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

/// How the lab server behaves.
#[derive(Clone)]
pub struct ServerProfile {
    /// Announced in the banner and the EHLO reply.
    pub hostname: String,
    /// Offer STARTTLS in the EHLO reply (needs `tls`).
    pub offer_starttls: bool,
    /// The TLS configuration for STARTTLS (or implicit TLS).
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// TLS from the first byte (SMTPS).
    pub implicit_tls: bool,
    /// Refuse MAIL before STARTTLS with `530 5.7.0 Must issue a STARTTLS command first`.
    pub require_tls: bool,
    /// Answer STARTTLS with `454 4.7.0 TLS not available due to local problem`.
    pub refuse_starttls: bool,
    /// Recipients answered with `550 5.1.1`.
    pub reject_rcpt: Vec<String>,
    /// Reply to the end of DATA with this line instead of `250 2.0.0 Ok: queued`.
    pub data_reply: Option<String>,
}

impl ServerProfile {
    /// A plain profile: offers STARTTLS if `tls` is given.
    pub fn new(hostname: &str, tls: Option<Arc<rustls::ServerConfig>>) -> Self {
        ServerProfile {
            hostname: hostname.to_string(),
            offer_starttls: tls.is_some(),
            tls,
            implicit_tls: false,
            require_tls: false,
            refuse_starttls: false,
            reject_rcpt: Vec::new(),
            data_reply: None,
        }
    }
}

/// A message as the lab server received it.
#[derive(Debug, Clone)]
pub struct Received {
    /// MAIL FROM address.
    pub from: String,
    /// Accepted RCPT TO addresses.
    pub rcpts: Vec<String>,
    /// The message (dot-unstuffed, without the final ".").
    pub data: Vec<u8>,
    /// Whether the session was TLS when DATA ended.
    pub tls: bool,
}

/// A running lab server.
pub struct LabServer {
    addr: SocketAddr,
    received: Arc<Mutex<Vec<Received>>>,
    task: tokio::task::JoinHandle<()>,
}

impl LabServer {
    /// Listens on `127.0.0.1:0` and serves until dropped.
    pub async fn start(profile: ServerProfile) -> io::Result<LabServer> {
        Self::start_on("127.0.0.1:0".parse().map_err(io::Error::other)?, profile).await
    }

    /// Listens on `addr` and serves until dropped.
    pub async fn start_on(addr: SocketAddr, profile: ServerProfile) -> io::Result<LabServer> {
        let listener = TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let received = Arc::new(Mutex::new(Vec::new()));
        let rec = received.clone();
        let profile = Arc::new(profile);
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let _ = stream.set_nodelay(true);
                let p = profile.clone();
                let r = rec.clone();
                tokio::spawn(async move {
                    let _ = serve(stream, p, r).await;
                });
            }
        });
        Ok(LabServer {
            addr,
            received,
            task,
        })
    }

    /// The listening address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Messages received so far.
    pub fn received(&self) -> Vec<Received> {
        self.received.lock().map(|v| v.clone()).unwrap_or_default()
    }
}

impl Drop for LabServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

trait Stream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Stream for T {}

async fn serve(
    stream: TcpStream,
    p: Arc<ServerProfile>,
    received: Arc<Mutex<Vec<Received>>>,
) -> io::Result<()> {
    let mut tls = false;
    let mut conn: BufReader<Box<dyn Stream>> = if p.implicit_tls {
        let cfg = p
            .tls
            .clone()
            .ok_or_else(|| io::Error::other("implicit TLS without a TLS config"))?;
        let s = tokio_rustls::TlsAcceptor::from(cfg).accept(stream).await?;
        tls = true;
        BufReader::new(Box::new(s))
    } else {
        BufReader::new(Box::new(stream))
    };
    conn.get_mut()
        .write_all(format!("220 {} ESMTP lab server ready\r\n", p.hostname).as_bytes())
        .await?;
    let mut from = String::new();
    let mut rcpts: Vec<String> = Vec::new();
    let mut line = Vec::new();
    loop {
        line.clear();
        let n = (&mut conn).take(4096).read_until(b'\n', &mut line).await?;
        if n == 0 {
            return Ok(());
        }
        let text = String::from_utf8_lossy(&line).trim_end().to_string();
        let upper = text.to_ascii_uppercase();
        let verb = upper.split(' ').next().unwrap_or("").to_string();
        let reply: String = match verb.as_str() {
            "EHLO" => {
                let mut r = format!(
                    "250-{}\r\n250-PIPELINING\r\n250-SIZE 52428800\r\n",
                    p.hostname
                );
                if p.offer_starttls && !tls && p.tls.is_some() {
                    r.push_str("250-STARTTLS\r\n");
                }
                r.push_str("250-ENHANCEDSTATUSCODES\r\n250-8BITMIME\r\n250 SMTPUTF8\r\n");
                r
            }
            "HELO" => format!("250 {}\r\n", p.hostname),
            "STARTTLS" if !tls && p.refuse_starttls => {
                "454 4.7.0 TLS not available due to local problem\r\n".into()
            }
            "STARTTLS" if !tls && p.tls.is_some() && p.offer_starttls => {
                conn.get_mut()
                    .write_all(b"220 2.0.0 Ready to start TLS\r\n")
                    .await?;
                if !conn.buffer().is_empty() {
                    return Err(io::Error::other("client pipelined data after STARTTLS"));
                }
                let cfg = p
                    .tls
                    .clone()
                    .ok_or_else(|| io::Error::other("no TLS config"))?;
                let inner = conn.into_inner();
                let s = tokio_rustls::TlsAcceptor::from(cfg).accept(inner).await?;
                conn = BufReader::new(Box::new(s));
                tls = true;
                from.clear();
                rcpts.clear();
                continue;
            }
            "STARTTLS" => "502 5.5.1 STARTTLS not available\r\n".into(),
            "MAIL" if p.require_tls && !tls => {
                "530 5.7.0 Must issue a STARTTLS command first\r\n".into()
            }
            "MAIL" => {
                from = addr_of(&text);
                rcpts.clear();
                "250 2.1.0 Ok\r\n".into()
            }
            "RCPT" => {
                let a = addr_of(&text);
                if p.reject_rcpt.iter().any(|r| r.eq_ignore_ascii_case(&a)) {
                    format!("550 5.1.1 <{a}>: Recipient address rejected: User unknown\r\n")
                } else {
                    rcpts.push(a);
                    "250 2.1.5 Ok\r\n".into()
                }
            }
            "DATA" if rcpts.is_empty() => "554 5.5.1 Error: no valid recipients\r\n".into(),
            "DATA" => {
                conn.get_mut()
                    .write_all(b"354 End data with <CR><LF>.<CR><LF>\r\n")
                    .await?;
                conn.get_mut().flush().await?;
                let data = read_data(&mut conn).await?;
                received
                    .lock()
                    .map_err(|_| io::Error::other("poisoned"))?
                    .push(Received {
                        from: from.clone(),
                        rcpts: rcpts.clone(),
                        data,
                        tls,
                    });
                rcpts.clear();
                match &p.data_reply {
                    Some(r) => format!("{r}\r\n"),
                    None => "250 2.0.0 Ok: queued as LAB1\r\n".into(),
                }
            }
            "RSET" => {
                rcpts.clear();
                "250 2.0.0 Ok\r\n".into()
            }
            "NOOP" => "250 2.0.0 Ok\r\n".into(),
            "QUIT" => {
                conn.get_mut().write_all(b"221 2.0.0 Bye\r\n").await?;
                let _ = conn.get_mut().shutdown().await;
                return Ok(());
            }
            _ => "502 5.5.2 Error: command not recognized\r\n".into(),
        };
        conn.get_mut().write_all(reply.as_bytes()).await?;
        conn.get_mut().flush().await?;
    }
}

fn addr_of(line: &str) -> String {
    match (line.find('<'), line.rfind('>')) {
        (Some(a), Some(b)) if b > a => line[a + 1..b].to_string(),
        _ => line.split(':').nth(1).unwrap_or("").trim().to_string(),
    }
}

async fn read_data<R: AsyncRead + Unpin>(r: &mut BufReader<R>) -> io::Result<Vec<u8>> {
    let mut data = Vec::new();
    let mut line = Vec::new();
    loop {
        line.clear();
        if r.read_until(b'\n', &mut line).await? == 0 {
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "EOF in DATA"));
        }
        if line == b".\r\n" {
            return Ok(data);
        }
        let body = if line.first() == Some(&b'.') {
            &line[1..]
        } else {
            &line[..]
        };
        data.extend_from_slice(body);
    }
}

/// Whether the lab client uses STARTTLS.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartTls {
    /// Never (cleartext session).
    Never,
    /// When the server offers it (opportunistic, like most MTAs).
    IfOffered,
    /// Always (fail if not offered).
    Required,
    /// TLS from the first byte (SMTPS, port 465): no STARTTLS.
    Implicit,
}

/// What the lab client sends.
#[derive(Clone)]
pub struct ClientOptions {
    /// The EHLO name.
    pub ehlo: String,
    /// STARTTLS policy.
    pub starttls: StartTls,
    /// TLS configuration (trust, versions).
    pub tls: Option<Arc<rustls::ClientConfig>>,
    /// The SNI / name to verify.
    pub server_name: String,
    /// MAIL FROM.
    pub from: String,
    /// RCPT TO (each).
    pub to: Vec<String>,
    /// The message (CRLF line ends; dot-stuffed by the client).
    pub body: Vec<u8>,
    /// Use HELO instead of EHLO.
    pub helo: bool,
}

/// What the lab client saw.
#[derive(Debug, Clone, Default)]
pub struct ClientReport {
    /// Every reply line received, in order.
    pub replies: Vec<String>,
    /// Whether TLS was negotiated.
    pub tls: bool,
    /// The final reply to DATA, if DATA got that far.
    pub data_reply: Option<String>,
    /// The error that ended the session early, if any (TLS failure, rejection…).
    pub error: Option<String>,
}

/// Sends one message to `addr`, per `opts`, and reports what happened. Never
/// panics; failures are in `ClientReport::error`.
pub async fn send(addr: SocketAddr, opts: &ClientOptions) -> ClientReport {
    let mut report = ClientReport::default();
    if let Err(e) =
        tokio::time::timeout(Duration::from_secs(30), send_inner(addr, opts, &mut report))
            .await
            .unwrap_or_else(|_| {
                Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "lab client timed out",
                ))
            })
    {
        report.error = Some(e.to_string());
    }
    report
}

async fn read_reply<R: AsyncRead + Unpin>(
    r: &mut BufReader<R>,
    report: &mut ClientReport,
) -> io::Result<(u16, String)> {
    let all = loop {
        let mut line = String::new();
        if r.read_line(&mut line).await? == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "server closed the connection",
            ));
        }
        let l = line.trim_end().to_string();
        report.replies.push(l.clone());
        if l.as_bytes().get(3) != Some(&b'-') {
            break l;
        }
    };
    let code = all.get(..3).and_then(|c| c.parse().ok()).unwrap_or(0);
    Ok((code, all))
}

async fn cmd<R: AsyncRead + AsyncWrite + Unpin>(
    c: &mut BufReader<R>,
    line: &str,
    report: &mut ClientReport,
) -> io::Result<(u16, String)> {
    c.get_mut()
        .write_all(format!("{line}\r\n").as_bytes())
        .await?;
    // A TLS stream may keep the end of a write buffered until flushed.
    c.get_mut().flush().await?;
    read_reply(c, report).await
}

/// The client side of a TLS handshake on `io`, per `o` (config and SNI).
async fn tls_connect<S: AsyncRead + AsyncWrite + Unpin>(
    o: &ClientOptions,
    io: S,
) -> io::Result<tokio_rustls::client::TlsStream<S>> {
    let cfg = o
        .tls
        .clone()
        .ok_or_else(|| io::Error::other("no client TLS config"))?;
    let name = rustls::pki_types::ServerName::try_from(o.server_name.clone())
        .map_err(|e| io::Error::other(e.to_string()))?;
    tokio_rustls::TlsConnector::from(cfg)
        .connect(name, io)
        .await
}

async fn send_inner(
    addr: SocketAddr,
    o: &ClientOptions,
    report: &mut ClientReport,
) -> io::Result<()> {
    let stream = TcpStream::connect(addr).await?;
    let _ = stream.set_nodelay(true);
    let mut c: BufReader<Box<dyn Stream>> = if o.starttls == StartTls::Implicit {
        let s = tls_connect(o, stream).await?;
        report.tls = true;
        BufReader::new(Box::new(s))
    } else {
        BufReader::new(Box::new(stream))
    };
    let (code, l) = read_reply(&mut c, report).await?;
    if code != 220 {
        return Err(io::Error::other(format!("banner: {l}")));
    }
    let hello = if o.helo { "HELO" } else { "EHLO" };
    let (code, _) = cmd(&mut c, &format!("{hello} {}", o.ehlo), report).await?;
    if code != 250 {
        return Err(io::Error::other("EHLO refused"));
    }
    let offered = report.replies.iter().any(|r| {
        r.get(4..)
            .is_some_and(|t| t.eq_ignore_ascii_case("STARTTLS"))
    });
    let want = match o.starttls {
        StartTls::Never | StartTls::Implicit => false,
        StartTls::IfOffered => offered,
        StartTls::Required => true,
    };
    if want {
        let (code, l) = cmd(&mut c, "STARTTLS", report).await?;
        if code != 220 {
            if o.starttls == StartTls::Required {
                return Err(io::Error::other(format!("STARTTLS refused: {l}")));
            }
        } else {
            let s = tls_connect(o, c.into_inner()).await?;
            report.tls = true;
            c = BufReader::new(Box::new(s));
            let (code, _) = cmd(&mut c, &format!("{hello} {}", o.ehlo), report).await?;
            if code != 250 {
                return Err(io::Error::other("EHLO after STARTTLS refused"));
            }
        }
    }
    let (code, l) = cmd(&mut c, &format!("MAIL FROM:<{}>", o.from), report).await?;
    if code != 250 {
        let _ = cmd(&mut c, "QUIT", report).await;
        return Err(io::Error::other(format!("MAIL refused: {l}")));
    }
    let mut any = false;
    for to in &o.to {
        let (code, _) = cmd(&mut c, &format!("RCPT TO:<{to}>"), report).await?;
        any |= code == 250;
    }
    if !any {
        let _ = cmd(&mut c, "QUIT", report).await;
        return Err(io::Error::other("no recipient accepted"));
    }
    let (code, l) = cmd(&mut c, "DATA", report).await?;
    if code != 354 {
        return Err(io::Error::other(format!("DATA refused: {l}")));
    }
    let mut stuffed = Vec::with_capacity(o.body.len() + 16);
    let mut at_line_start = true;
    for &byte in &o.body {
        if at_line_start && byte == b'.' {
            stuffed.push(b'.');
        }
        stuffed.push(byte);
        at_line_start = byte == b'\n';
    }
    if !stuffed.ends_with(b"\r\n") {
        stuffed.extend_from_slice(b"\r\n");
    }
    stuffed.extend_from_slice(b".\r\n");
    c.get_mut().write_all(&stuffed).await?;
    c.get_mut().flush().await?;
    let (_, l) = read_reply(&mut c, report).await?;
    report.data_reply = Some(l);
    let _ = cmd(&mut c, "QUIT", report).await;
    let _ = c.get_mut().shutdown().await;
    Ok(())
}

/// A rustls server configuration presenting `chain` (leaf first) with `key` (PKCS#8 DER).
pub fn server_config(
    chain: Vec<Vec<u8>>,
    key: Vec<u8>,
) -> Result<Arc<rustls::ServerConfig>, rustls::Error> {
    let chain = chain
        .into_iter()
        .map(rustls::pki_types::CertificateDer::from)
        .collect();
    let key = rustls::pki_types::PrivateKeyDer::Pkcs8(key.into());
    Ok(Arc::new(
        rustls::ServerConfig::builder()
            .with_no_client_auth()
            .with_single_cert(chain, key)?,
    ))
}

/// A rustls client configuration that trusts exactly `anchors` (DER) and checks names.
pub fn client_config_verifying(
    anchors: &[Vec<u8>],
) -> Result<Arc<rustls::ClientConfig>, rustls::Error> {
    let mut roots = rustls::RootCertStore::empty();
    for a in anchors {
        roots.add(rustls::pki_types::CertificateDer::from(a.clone()))?;
    }
    Ok(Arc::new(
        rustls::ClientConfig::builder()
            .with_root_certificates(roots)
            .with_no_client_auth(),
    ))
}

/// A rustls client configuration for opportunistic TLS, as most MTAs do by
/// default: encrypt, but accept any certificate (no trust or name check).
pub fn client_config_opportunistic() -> Arc<rustls::ClientConfig> {
    client_config_opportunistic_with(rustls::DEFAULT_VERSIONS)
}

/// Opportunistic TLS limited to these protocol versions (e.g. only TLS 1.2,
/// as a Windows Server 2019 Exchange would do, so the certificate is visible).
pub fn client_config_opportunistic_with(
    versions: &[&'static rustls::SupportedProtocolVersion],
) -> Arc<rustls::ClientConfig> {
    Arc::new(
        rustls::ClientConfig::builder_with_protocol_versions(versions)
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AcceptAnyCert))
            .with_no_client_auth(),
    )
}

#[derive(Debug)]
struct AcceptAnyCert;

impl rustls::client::danger::ServerCertVerifier for AcceptAnyCert {
    fn verify_server_cert(
        &self,
        _end_entity: &rustls::pki_types::CertificateDer<'_>,
        _intermediates: &[rustls::pki_types::CertificateDer<'_>],
        _server_name: &rustls::pki_types::ServerName<'_>,
        _ocsp: &[u8],
        _now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &crate::crypto::provider().signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &crate::crypto::provider().signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        crate::crypto::provider()
            .signature_verification_algorithms
            .supported_schemes()
    }
}
