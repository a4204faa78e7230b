//! The gateways of a chaos run: `n` `herald-gateway serve` processes, each on a fixed loopback
//! port once it has one (a restarted gateway comes back where its clients and the publisher
//! look for it), and [`Fleet`], the run's shared view of which of them are up.
//!
//! Clients and the publisher do not wait for that view to learn of a death: a killed gateway
//! refuses connections, which they take as a reason to move on. The view only spares them
//! knocking on a door known to be shut.

use std::cell::RefCell;
use std::path::Path;
use std::process::Child;
use std::rc::Rc;
use std::time::Duration;

use crate::gateways::{GatewaySpec, wait_ready};

/// Which gateways are up, by index; their base URLs.
pub struct Fleet {
    pub urls: Vec<String>,
    up: RefCell<Vec<bool>>,
}

impl Fleet {
    pub fn new(urls: Vec<String>) -> Fleet {
        let up = RefCell::new(vec![true; urls.len()]);
        Fleet { urls, up }
    }

    pub fn len(&self) -> usize {
        self.urls.len()
    }

    pub fn is_empty(&self) -> bool {
        self.urls.is_empty()
    }

    pub fn set_up(&self, i: usize, up: bool) {
        self.up.borrow_mut()[i] = up;
    }

    /// The first gateway at or after `from` (cyclically) that is up; `from` itself when none is.
    pub fn next_up(&self, from: usize) -> usize {
        let n = self.urls.len();
        let up = self.up.borrow();
        (0..n).map(|d| (from + d) % n).find(|&i| up[i]).unwrap_or(from % n)
    }
}

/// The gateway processes.
pub struct Gateways {
    specs: Vec<GatewaySpec>,
    children: Vec<Option<Child>>,
    addrs: Vec<String>,
}

impl Gateways {
    /// Starts `n` gateways on free ports, each logging to `gateway-<i>.log` in `dir`, and waits
    /// until every one is ready.
    pub async fn start(spec: &GatewaySpec, n: usize, dir: &Path) -> Result<Gateways, String> {
        let mut g = Gateways { specs: Vec::new(), children: Vec::new(), addrs: Vec::new() };
        for i in 0..n {
            let mut spec = spec.clone();
            spec.log = Some(dir.join(format!("gateway-{i}.log")));
            let (child, addr) = spawn(spec.clone(), "127.0.0.1:0".into()).await?;
            g.specs.push(spec);
            g.children.push(Some(child));
            g.addrs.push(addr);
        }
        for url in g.urls() {
            wait_ready(&url, Duration::from_secs(30)).await?;
        }
        Ok(g)
    }

    pub fn urls(&self) -> Vec<String> {
        self.addrs.iter().map(|a| format!("http://{a}")).collect()
    }

    /// SIGKILLs gateway `i`: no drain, its streams reset.
    pub fn kill(&mut self, i: usize) {
        if let Some(mut c) = self.children[i].take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// What [`Gateways::restart`] needs, taken out so that no borrow is held while it runs.
    pub fn restart_spec(&self, i: usize) -> (GatewaySpec, String) {
        (self.specs[i].clone(), self.addrs[i].clone())
    }

    pub fn restarted(&mut self, i: usize, child: Child) {
        self.children[i] = Some(child);
    }

    pub fn stop_all(&mut self) {
        for i in 0..self.children.len() {
            self.kill(i);
        }
    }
}

impl Drop for Gateways {
    fn drop(&mut self) {
        self.stop_all();
    }
}

/// Starts a gateway off the runtime's thread: it takes a while to say where it listens, and the
/// clients and the publisher must keep running meanwhile.
pub async fn spawn(spec: GatewaySpec, listen: String) -> Result<(Child, String), String> {
    tokio::task::spawn_blocking(move || spec.spawn(&listen)).await.map_err(|e| format!("gateway start: {e}"))?
}

/// Starts gateway `i` of `gateways` again on its port and waits until it is ready.
pub async fn restart(gateways: &Rc<RefCell<Gateways>>, i: usize) -> Result<(), String> {
    let (spec, addr) = gateways.borrow().restart_spec(i);
    let (child, _) = spawn(spec, addr.clone()).await?;
    gateways.borrow_mut().restarted(i, child);
    wait_ready(&format!("http://{addr}"), Duration::from_secs(30)).await
}
