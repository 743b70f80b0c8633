//! A TCP load balancer the test controls, as a Kubernetes Service is one: each new connection goes
//! to the next of the replicas in rotation; taking a replica out of rotation (its pod turning not
//! ready, or terminating) sends no new connections to it, while its open ones carry on until the
//! replica itself closes them as it drains.

use std::{
    net::SocketAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
};

use tokio::net::{TcpListener, TcpStream};

pub struct Balancer {
    pub addr: SocketAddr,
    rotation: Arc<Mutex<Vec<SocketAddr>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Balancer {
    pub async fn start(replicas: &[SocketAddr]) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind balancer");
        let addr = listener.local_addr().expect("balancer addr");
        let rotation = Arc::new(Mutex::new(replicas.to_vec()));
        let next = Arc::new(AtomicUsize::new(0));
        let in_rotation = rotation.clone();
        let task = tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                let target = {
                    let rotation = in_rotation.lock().unwrap();
                    (!rotation.is_empty()).then(|| rotation[next.fetch_add(1, Ordering::Relaxed) % rotation.len()])
                };
                // No replica in rotation: the connection is refused (closed at once).
                let Some(target) = target else { continue };
                tokio::spawn(async move {
                    let _ = client.set_nodelay(true);
                    let Ok(mut server) = TcpStream::connect(target).await else { return };
                    let _ = server.set_nodelay(true);
                    let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                });
            }
        });
        Self { addr, rotation, task }
    }

    /// Puts `replica` into rotation.
    pub fn add(&self, replica: SocketAddr) {
        self.rotation.lock().unwrap().push(replica);
    }

    /// Takes `replica` out of rotation: no new connection goes to it.
    pub fn remove(&self, replica: SocketAddr) {
        self.rotation.lock().unwrap().retain(|r| *r != replica);
    }
}

impl Drop for Balancer {
    fn drop(&mut self) {
        self.task.abort();
    }
}
