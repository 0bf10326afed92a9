//! The fake downstreams as a standalone process, for the demo (`scripts/demo`): HubSpot on a fixed
//! address, its state readable at `GET /__fake/state`. Runs until killed.

use std::net::SocketAddr;

use relay_testkit::hubspot::FakeHubSpot;

const USAGE: &str =
    "usage: fake-downstreams [--hubspot-addr 127.0.0.1:18080] [--hubspot-token TOKEN]";

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut addr: SocketAddr = "127.0.0.1:18080".parse()?;
    let mut token = "demo-token".to_owned();
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let value = args.next().ok_or(USAGE)?;
        match flag.as_str() {
            "--hubspot-addr" => addr = value.parse()?,
            "--hubspot-token" => token = value,
            _ => return Err(USAGE.into()),
        }
    }
    let hubspot = FakeHubSpot::start_on(addr, &token).await?;
    eprintln!("fake HubSpot on {}", hubspot.base_url());
    tokio::signal::ctrl_c().await?;
    Ok(())
}
