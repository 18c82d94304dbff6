//! Tests of the recording test upstream (`tests/common/upstream.rs`) itself, so a
//! gateway test that fails points at the gateway, not at its test double.

#[path = "common/upstream.rs"]
mod upstream;

use std::convert::Infallible;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderMap, Method, Request, StatusCode, Version};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use upstream::Upstream;

type TestClient = Client<HttpConnector, BoxBody<Bytes, Infallible>>;

fn http1_client() -> TestClient {
    Client::builder(TokioExecutor::new()).build_http()
}

fn h2c_client() -> TestClient {
    Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build_http()
}

fn body(text: &str) -> BoxBody<Bytes, Infallible> {
    Full::new(Bytes::from(text.to_owned())).boxed()
}

/// Sends a GET and returns status, headers and the body as text.
async fn get(client: &TestClient, url: String) -> (StatusCode, HeaderMap, String) {
    let req = Request::get(url).body(body("")).unwrap();
    let resp = client.request(req).await.unwrap();
    let (parts, incoming) = resp.into_parts();
    let bytes = incoming.collect().await.unwrap().to_bytes();
    (
        parts.status,
        parts.headers,
        String::from_utf8(bytes.to_vec()).unwrap(),
    )
}

#[tokio::test]
async fn records_and_echoes_an_http1_request() {
    let upstream = Upstream::start().await;
    let req = Request::builder()
        .method(Method::POST)
        .uri(format!("{}/echo/x?a=1&b=%2F", upstream.url()))
        .header("X-Multi", "one")
        .header("x-multi", "two")
        .header("content-type", "text/plain")
        .body(body("hello"))
        .unwrap();
    let resp = http1_client().request(req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.headers()["content-type"], "application/json");
    let echoed: serde_json::Value =
        serde_json::from_slice(&resp.into_body().collect().await.unwrap().to_bytes()).unwrap();
    assert_eq!(echoed["method"], "POST");
    assert_eq!(echoed["uri"], "/echo/x?a=1&b=%2F");
    assert_eq!(echoed["version"], "HTTP/1.1");
    assert_eq!(echoed["body"], "hello");
    assert!(echoed["headers"]
        .as_array()
        .unwrap()
        .contains(&serde_json::json!(["x-multi", "two"])));

    let recorded = upstream.wait_for(1).await;
    let r = &recorded[0];
    assert_eq!(r.method, "POST");
    assert_eq!(r.uri, "/echo/x?a=1&b=%2F");
    assert_eq!(r.query("b").as_deref(), Some("/"));
    assert_eq!(r.version, Version::HTTP_11);
    assert_eq!(r.header_all("X-MULTI"), ["one", "two"]);
    assert_eq!(r.header("Content-Type").as_deref(), Some("text/plain"));
    assert_eq!(r.header("x-absent"), None);
    assert!(r.headers.iter().all(|(n, _)| n == &n.to_lowercase()));
    assert_eq!(r.body, "hello");
    assert!(r.trailers.is_empty());
}

#[tokio::test]
async fn records_h2c_requests_with_trailers() {
    let upstream = Upstream::start().await;
    let mut trailers = HeaderMap::new();
    trailers.insert("x-checksum", "abc".parse().unwrap());
    let with_trailers = Full::new(Bytes::from_static(b"payload"))
        .with_trailers(async move { Some(Ok(trailers)) })
        .boxed();
    let req = Request::post(format!("{}/upload", upstream.url()))
        .body(with_trailers)
        .unwrap();
    let resp = h2c_client().request(req).await.unwrap();
    assert_eq!(resp.version(), Version::HTTP_2);
    assert_eq!(resp.status(), StatusCode::OK);

    let r = &upstream.wait_for(1).await[0];
    assert_eq!(r.version, Version::HTTP_2);
    assert_eq!(r.uri, "/upload");
    assert_eq!(r.body, "payload");
    assert_eq!(r.trailers, [("x-checksum".to_owned(), "abc".to_owned())]);
}

#[tokio::test]
async fn records_http1_chunked_trailers() {
    let upstream = Upstream::start().await;
    // Written by hand: clients differ in whether they send HTTP/1.1 trailers.
    let mut stream = tokio::net::TcpStream::connect(upstream.addr).await.unwrap();
    stream
        .write_all(
            b"POST /t HTTP/1.1\r\nHost: test\r\nTransfer-Encoding: chunked\r\n\
              Connection: close\r\n\r\n5\r\nhello\r\n0\r\nX-Checksum: abc\r\n\r\n",
        )
        .await
        .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    assert!(response.starts_with("HTTP/1.1 200 OK\r\n"), "{response}");

    let r = &upstream.wait_for(1).await[0];
    assert_eq!(r.body, "hello");
    assert_eq!(r.trailers, [("x-checksum".to_owned(), "abc".to_owned())]);
}

#[tokio::test]
async fn answers_its_routes() {
    let upstream = Upstream::start().await;
    let client = http1_client();
    let url = |path: &str| format!("{}{path}", upstream.url());

    let (status, headers, text) = get(&client, url("/anything")).await;
    assert_eq!((status, text.as_str()), (StatusCode::OK, "ok"));
    assert_eq!(headers["content-type"], "text/plain");

    assert_eq!(
        get(&client, url("/status?code=418")).await.0,
        StatusCode::IM_A_TEAPOT
    );
    let (status, _, text) = get(&client, url("/status?code=204")).await;
    assert_eq!((status, text.as_str()), (StatusCode::NO_CONTENT, ""));
    assert_eq!(
        get(&client, url("/status?code=99")).await.0,
        StatusCode::BAD_REQUEST
    );

    let (status, headers, text) = get(
        &client,
        url(
            "/respond?header=Set-Cookie:a%3D1&header=set-cookie:b=2&header=X-Session-End:1\
             &body=%3Ch1%3Ehi+there%3C%2Fh1%3E&type=text/html",
        ),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(headers["content-type"], "text/html");
    let cookies: Vec<_> = headers.get_all("set-cookie").iter().collect();
    assert_eq!(cookies, ["a=1", "b=2"]);
    assert_eq!(headers["x-session-end"], "1");
    assert_eq!(text, "<h1>hi there</h1>");

    let started = Instant::now();
    let (_, _, text) = get(&client, url("/slow?ms=200")).await;
    assert_eq!(text, "slow");
    assert!(started.elapsed() >= Duration::from_millis(200));

    let started = Instant::now();
    let (_, headers, text) = get(&client, url("/stream?chunks=3&ms=50")).await;
    assert_eq!(text, "chunk 0\nchunk 1\nchunk 2\n");
    assert_eq!(headers["transfer-encoding"], "chunked");
    assert!(started.elapsed() >= Duration::from_millis(100));

    let recorded = upstream.wait_for(7).await;
    assert_eq!(recorded[0].uri, "/anything");
    assert_eq!(recorded.len(), upstream.requests().len());
}

#[tokio::test]
async fn stops_when_dropped() {
    let upstream = Upstream::start().await;
    let addr = upstream.addr;
    assert_eq!(get(&http1_client(), upstream.url()).await.0, StatusCode::OK);
    drop(upstream);
    // The listener closes when the accept task notices; give it a moment.
    for _ in 0..100 {
        if tokio::net::TcpStream::connect(addr).await.is_err() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("the test upstream still accepts connections after being dropped");
}
