//! What the MongoDB tests need of a server, so that one test body runs against the wire
//! double and against SecantusDB (and, by URI, a real mongod).

use super::mongo_double::MongoDouble;
use super::secantus::Secantus;

/// A MongoDB-wire server a test can take down and bring back: the double or SecantusDB.
pub trait MongoServer {
    fn uri(&self) -> String;
    fn stop(&mut self);
    /// Back on the same port with the same data, accepting connections.
    fn start(&mut self);
}

/// On a shared reference: the double stops and starts through `&self`, so a test can inspect
/// it while the story holds it.
impl MongoServer for &MongoDouble {
    fn uri(&self) -> String {
        MongoDouble::uri(self)
    }
    fn stop(&mut self) {
        MongoDouble::stop(self);
    }
    fn start(&mut self) {
        MongoDouble::start(self);
    }
}

impl MongoServer for Secantus {
    fn uri(&self) -> String {
        Secantus::uri(self)
    }
    fn stop(&mut self) {
        Secantus::stop(self);
    }
    fn start(&mut self) {
        Secantus::start(self);
    }
}
