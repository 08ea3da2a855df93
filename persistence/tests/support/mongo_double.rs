//! A MongoDB wire-protocol test double, owned by the tests.
//!
//! It speaks just enough of the protocol for the official driver: OP_MSG (body and document
//! sequence sections) and the legacy OP_QUERY `isMaster` handshake answered with OP_REPLY;
//! commands hello/isMaster, ping, buildInfo, insert, update, delete, find, getMore,
//! killCursors, createIndexes, endSessions. Collections are in memory, unique by `_id`
//! (a duplicate gets a write error with code 11000, like a real server); no other index is
//! enforced. Filters know equality and `$lt $lte $gt $gte $eq $ne $in`; updates know `$set
//! $unset $max $setOnInsert` and replacement; upserts seed the new document from the filter's
//! equalities, as mongod does.
//!
//! [`MongoDouble::stop`] closes the listener and every connection; [`MongoDouble::start`]
//! listens again on the same port with the same data — a server going down and coming back.

use std::cmp::Ordering;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::io::Cursor;
use std::sync::{Arc, Mutex};

use mongodb::bson::{doc, oid::ObjectId, Bson, DateTime, Document};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

const OP_REPLY: i32 = 1;
const OP_QUERY: i32 = 2004;
const OP_MSG: i32 = 2013;
const MESSAGE_BYTES_MAX: usize = 48_000_000;
const FIRST_BATCH_DOCS: usize = 101;

#[derive(Default)]
struct State {
    /// "db.coll" → id key → document.
    colls: HashMap<String, BTreeMap<String, Document>>,
    cursors: HashMap<i64, (String, VecDeque<Document>)>,
    next_cursor: i64,
    commands: HashMap<String, u64>,
    /// Documents per insert command, in arrival order.
    insert_batches: Vec<usize>,
    duplicate_errors: u64,
    connections: i64,
}

pub struct MongoDouble {
    rt: tokio::runtime::Runtime,
    port: u16,
    state: Arc<Mutex<State>>,
    tasks: Arc<Mutex<Vec<JoinHandle<()>>>>,
}

impl MongoDouble {
    pub fn start_new() -> MongoDouble {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let listener = rt.block_on(TcpListener::bind("127.0.0.1:0")).unwrap();
        let port = listener.local_addr().unwrap().port();
        let d = MongoDouble {
            rt,
            port,
            state: Arc::default(),
            tasks: Arc::default(),
        };
        d.serve(listener);
        d
    }

    pub fn uri(&self) -> String {
        format!("mongodb://127.0.0.1:{}/?directConnection=true", self.port)
    }

    fn serve(&self, listener: TcpListener) {
        let (state, tasks) = (self.state.clone(), self.tasks.clone());
        let accept = self.rt.spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let conn = tokio::spawn(connection(stream, state.clone()));
                tasks.lock().unwrap().push(conn);
            }
        });
        self.tasks.lock().unwrap().push(accept);
    }

    /// Goes down: the listener and every open connection are closed.
    pub fn stop(&self) {
        let tasks: Vec<_> = self.tasks.lock().unwrap().drain(..).collect();
        for t in &tasks {
            t.abort();
        }
        self.rt.block_on(async {
            for t in tasks {
                let _ = t.await;
            }
        });
    }

    /// Comes back on the same port, with the same data.
    pub fn start(&self) {
        let listener = self
            .rt
            .block_on(TcpListener::bind(("127.0.0.1", self.port)))
            .unwrap();
        self.serve(listener);
    }

    pub fn docs(&self, db: &str, coll: &str) -> Vec<Document> {
        let s = self.state.lock().unwrap();
        s.colls
            .get(&format!("{db}.{coll}"))
            .map(|c| c.values().cloned().collect())
            .unwrap_or_default()
    }

    pub fn insert_batches(&self) -> Vec<usize> {
        self.state.lock().unwrap().insert_batches.clone()
    }

    pub fn command_count(&self, name: &str) -> u64 {
        self.state
            .lock()
            .unwrap()
            .commands
            .get(name)
            .copied()
            .unwrap_or(0)
    }

    pub fn duplicate_errors(&self) -> u64 {
        self.state.lock().unwrap().duplicate_errors
    }
}

impl Drop for MongoDouble {
    fn drop(&mut self) {
        self.stop();
    }
}

async fn connection(mut stream: TcpStream, state: Arc<Mutex<State>>) {
    let conn_id = {
        let mut s = state.lock().unwrap();
        s.connections += 1;
        s.connections
    };
    let mut next_id = 1i32;
    loop {
        let mut header = [0u8; 16];
        if stream.read_exact(&mut header).await.is_err() {
            return;
        }
        let word = |i: usize| i32::from_le_bytes(header[i..i + 4].try_into().unwrap());
        let (len, request_id, op) = (word(0) as usize, word(4), word(12));
        if !(16..=MESSAGE_BYTES_MAX).contains(&len) {
            return;
        }
        let mut body = vec![0u8; len - 16];
        if stream.read_exact(&mut body).await.is_err() {
            return;
        }
        let reply = match op {
            OP_MSG => parse_op_msg(&body).map(|(cmd, more_to_come)| {
                let r = run(&state, cmd, conn_id);
                (!more_to_come).then(|| encode_op_msg(&r))
            }),
            OP_QUERY => {
                parse_op_query(&body).map(|cmd| Some(encode_op_reply(&run(&state, cmd, conn_id))))
            }
            _ => None,
        };
        let Some(reply) = reply else { return };
        let Some((op, payload)) = reply else { continue };
        let mut out = Vec::with_capacity(payload.len() + 16);
        out.extend_from_slice(&((payload.len() + 16) as i32).to_le_bytes());
        out.extend_from_slice(&next_id.to_le_bytes());
        out.extend_from_slice(&request_id.to_le_bytes());
        out.extend_from_slice(&op.to_le_bytes());
        out.extend_from_slice(&payload);
        next_id += 1;
        if stream.write_all(&out).await.is_err() {
            return;
        }
    }
}

fn read_cstring(c: &mut Cursor<&[u8]>) -> Option<String> {
    let buf = *c.get_ref();
    let start = c.position() as usize;
    let end = start + buf.get(start..)?.iter().position(|b| *b == 0)?;
    c.set_position((end + 1) as u64);
    String::from_utf8(buf[start..end].to_vec()).ok()
}

/// The command document with document-sequence sections folded in, and the moreToCome flag.
fn parse_op_msg(body: &[u8]) -> Option<(Document, bool)> {
    let flags = u32::from_le_bytes(body.get(..4)?.try_into().ok()?);
    let end = if flags & 1 != 0 {
        body.len() - 4
    } else {
        body.len()
    };
    let mut c = Cursor::new(&body[..end]);
    c.set_position(4);
    let mut cmd = Document::new();
    let mut sequences = Vec::new();
    while (c.position() as usize) < end {
        let mut kind = [0u8];
        std::io::Read::read_exact(&mut c, &mut kind).ok()?;
        if kind[0] == 0 {
            cmd = Document::from_reader(&mut c).ok()?;
        } else {
            let start = c.position() as usize;
            let size = i32::from_le_bytes(body.get(start..start + 4)?.try_into().ok()?) as usize;
            c.set_position((start + 4) as u64);
            let name = read_cstring(&mut c)?;
            let mut docs = Vec::new();
            while (c.position() as usize) < start + size {
                docs.push(Bson::Document(Document::from_reader(&mut c).ok()?));
            }
            sequences.push((name, docs));
        }
    }
    for (name, docs) in sequences {
        cmd.insert(name, Bson::Array(docs));
    }
    Some((cmd, flags & 2 != 0))
}

fn parse_op_query(body: &[u8]) -> Option<Document> {
    let mut c = Cursor::new(body);
    c.set_position(4);
    read_cstring(&mut c)?;
    c.set_position(c.position() + 8);
    Document::from_reader(&mut c).ok()
}

fn encode_op_msg(reply: &Document) -> (i32, Vec<u8>) {
    let mut out = vec![0, 0, 0, 0, 0];
    reply.to_writer(&mut out).unwrap();
    (OP_MSG, out)
}

fn encode_op_reply(reply: &Document) -> (i32, Vec<u8>) {
    let mut out = Vec::new();
    out.extend_from_slice(&0i32.to_le_bytes());
    out.extend_from_slice(&0i64.to_le_bytes());
    out.extend_from_slice(&0i32.to_le_bytes());
    out.extend_from_slice(&1i32.to_le_bytes());
    reply.to_writer(&mut out).unwrap();
    (OP_REPLY, out)
}

fn run(state: &Mutex<State>, cmd: Document, conn_id: i64) -> Document {
    let Some(name) = cmd.keys().next().cloned() else {
        return doc! {"ok": 0.0, "errmsg": "empty command", "code": 59};
    };
    let db = cmd.get_str("$db").unwrap_or("admin").to_string();
    let mut s = state.lock().unwrap();
    *s.commands.entry(name.clone()).or_default() += 1;
    let ns = |c: &Document| format!("{db}.{}", c.get_str(&name).unwrap_or(""));
    match name.as_str() {
        "hello" | "isMaster" | "ismaster" => doc! {
            "helloOk": true, "ismaster": true, "isWritablePrimary": true,
            "maxBsonObjectSize": 16 * 1024 * 1024, "maxMessageSizeBytes": MESSAGE_BYTES_MAX as i32,
            "maxWriteBatchSize": 100_000, "localTime": DateTime::now(),
            "logicalSessionTimeoutMinutes": 30, "connectionId": conn_id,
            "minWireVersion": 0, "maxWireVersion": 21, "readOnly": false, "ok": 1.0,
        },
        "ping" | "endSessions" => doc! {"ok": 1.0},
        "buildInfo" | "buildinfo" => {
            doc! {"version": "7.0.0-double", "versionArray": [7, 0, 0, 0], "ok": 1.0}
        }
        "createIndexes" => {
            doc! {"createdCollectionAutomatically": false, "numIndexesBefore": 1, "numIndexesAfter": 2, "ok": 1.0}
        }
        "insert" => s.insert(&ns(&cmd), &cmd),
        "update" => s.update(&ns(&cmd), &cmd),
        "delete" => s.delete(&ns(&cmd), &cmd),
        "find" => s.find(&ns(&cmd), &cmd),
        "getMore" => s.get_more(&cmd),
        "killCursors" => {
            for id in cmd.get_array("cursors").cloned().unwrap_or_default() {
                if let Bson::Int64(id) = id {
                    s.cursors.remove(&id);
                }
            }
            doc! {"ok": 1.0}
        }
        other => {
            doc! {"ok": 0.0, "errmsg": format!("no such command: '{other}'"), "code": 59, "codeName": "CommandNotFound"}
        }
    }
}

fn id_key(id: &Bson) -> String {
    format!("{id:?}")
}

fn docs_of(cmd: &Document, key: &str) -> Vec<Document> {
    cmd.get_array(key)
        .map(|a| a.iter().filter_map(|b| b.as_document().cloned()).collect())
        .unwrap_or_default()
}

impl State {
    fn insert(&mut self, ns: &str, cmd: &Document) -> Document {
        let docs = docs_of(cmd, "documents");
        let ordered = cmd.get_bool("ordered").unwrap_or(true);
        self.insert_batches.push(docs.len());
        let coll = self.colls.entry(ns.to_string()).or_default();
        let (mut n, mut errors) = (0, Vec::new());
        for (index, mut d) in docs.into_iter().enumerate() {
            if !d.contains_key("_id") {
                d.insert("_id", ObjectId::new());
            }
            let key = id_key(d.get("_id").unwrap());
            if coll.contains_key(&key) {
                errors.push(Bson::Document(doc! {
                    "index": index as i32, "code": 11000,
                    "errmsg": format!("E11000 duplicate key error collection: {ns} index: _id_ dup key: {key}"),
                }));
                if ordered {
                    break;
                }
                continue;
            }
            coll.insert(key, d);
            n += 1;
        }
        self.duplicate_errors += errors.len() as u64;
        let mut reply = doc! {"n": n, "ok": 1.0};
        if !errors.is_empty() {
            reply.insert("writeErrors", errors);
        }
        reply
    }

    fn update(&mut self, ns: &str, cmd: &Document) -> Document {
        let coll = self.colls.entry(ns.to_string()).or_default();
        let (mut n, mut modified, mut upserted) = (0, 0, Vec::new());
        for (index, u) in docs_of(cmd, "updates").into_iter().enumerate() {
            let (Ok(q), Ok(upd)) = (u.get_document("q"), u.get_document("u")) else {
                continue;
            };
            let multi = u.get_bool("multi").unwrap_or(false);
            let keys: Vec<String> = coll
                .iter()
                .filter(|(_, d)| matches(d, q))
                .map(|(k, _)| k.clone())
                .collect();
            for k in keys.iter().take(if multi { usize::MAX } else { 1 }) {
                let d = coll.get_mut(k).unwrap();
                let before = d.clone();
                apply_update(d, upd, false);
                n += 1;
                modified += i32::from(*d != before);
            }
            if keys.is_empty() && u.get_bool("upsert").unwrap_or(false) {
                let mut d: Document = q
                    .iter()
                    .filter(|(_, v)| !is_operator_doc(v))
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect();
                apply_update(&mut d, upd, true);
                if !d.contains_key("_id") {
                    d.insert("_id", ObjectId::new());
                }
                let id = d.get("_id").unwrap().clone();
                coll.insert(id_key(&id), d);
                upserted.push(Bson::Document(doc! {"index": index as i32, "_id": id}));
                n += 1;
            }
        }
        let mut reply = doc! {"n": n, "nModified": modified, "ok": 1.0};
        if !upserted.is_empty() {
            reply.insert("upserted", upserted);
        }
        reply
    }

    fn delete(&mut self, ns: &str, cmd: &Document) -> Document {
        let coll = self.colls.entry(ns.to_string()).or_default();
        let mut n = 0;
        for d in docs_of(cmd, "deletes") {
            let Ok(q) = d.get_document("q") else { continue };
            let limit = d.get_i32("limit").unwrap_or(0);
            let keys: Vec<String> = coll
                .iter()
                .filter(|(_, d)| matches(d, q))
                .map(|(k, _)| k.clone())
                .collect();
            for k in keys.iter().take(if limit == 1 { 1 } else { usize::MAX }) {
                coll.remove(k);
                n += 1;
            }
        }
        doc! {"n": n, "ok": 1.0}
    }

    fn find(&mut self, ns: &str, cmd: &Document) -> Document {
        let filter = cmd.get_document("filter").cloned().unwrap_or_default();
        let mut docs: Vec<Document> = self
            .colls
            .get(ns)
            .map(|c| {
                c.values()
                    .filter(|d| matches(d, &filter))
                    .cloned()
                    .collect()
            })
            .unwrap_or_default();
        if let Ok(sort) = cmd.get_document("sort") {
            docs.sort_by(|a, b| {
                for (k, dir) in sort {
                    let o = compare(a.get(k), b.get(k));
                    if o != Ordering::Equal {
                        return if number(dir).unwrap_or(1.0) < 0.0 {
                            o.reverse()
                        } else {
                            o
                        };
                    }
                }
                Ordering::Equal
            });
        }
        let skip = cmd.get("skip").and_then(number).unwrap_or(0.0) as usize;
        let limit = cmd.get("limit").and_then(number).unwrap_or(0.0).abs() as usize;
        let mut rest: VecDeque<Document> = docs.into_iter().skip(skip).collect();
        if limit > 0 {
            rest.truncate(limit);
        }
        let batch = cmd
            .get("batchSize")
            .and_then(number)
            .map_or(FIRST_BATCH_DOCS, |b| b as usize);
        self.reply_batch(ns.to_string(), rest, batch, "firstBatch", 0)
    }

    fn get_more(&mut self, cmd: &Document) -> Document {
        let id = cmd.get_i64("getMore").unwrap_or(0);
        let batch = cmd
            .get("batchSize")
            .and_then(number)
            .map_or(usize::MAX, |b| b as usize);
        match self.cursors.remove(&id) {
            Some((ns, rest)) => self.reply_batch(ns, rest, batch, "nextBatch", id),
            None => {
                doc! {"ok": 0.0, "errmsg": format!("cursor id {id} not found"), "code": 43, "codeName": "CursorNotFound"}
            }
        }
    }

    fn reply_batch(
        &mut self,
        ns: String,
        mut rest: VecDeque<Document>,
        batch: usize,
        field: &str,
        id: i64,
    ) -> Document {
        let take = rest.len().min(batch.max(1));
        let out: Vec<Bson> = rest.drain(..take).map(Bson::Document).collect();
        let id = if rest.is_empty() {
            0
        } else {
            let id = if id == 0 {
                self.next_cursor += 1;
                self.next_cursor
            } else {
                id
            };
            self.cursors.insert(id, (ns.clone(), rest));
            id
        };
        let mut cursor = doc! {"id": id, "ns": ns};
        cursor.insert(field, out);
        doc! {"cursor": cursor, "ok": 1.0}
    }
}

fn is_operator_doc(v: &Bson) -> bool {
    matches!(v, Bson::Document(d) if d.keys().next().is_some_and(|k| k.starts_with('$')))
}

fn number(b: &Bson) -> Option<f64> {
    match b {
        Bson::Int32(v) => Some(f64::from(*v)),
        Bson::Int64(v) => Some(*v as f64),
        Bson::Double(v) => Some(*v),
        _ => None,
    }
}

/// mongod's order for what we store: missing < null < numbers < strings; numbers by value.
fn compare(a: Option<&Bson>, b: Option<&Bson>) -> Ordering {
    fn rank(b: Option<&Bson>) -> u8 {
        match b {
            None => 0,
            Some(Bson::Null) => 1,
            Some(b) if number(b).is_some() => 2,
            Some(Bson::String(_)) => 3,
            Some(_) => 4,
        }
    }
    match (a, b) {
        (Some(x), Some(y)) if number(x).is_some() && number(y).is_some() => number(x)
            .unwrap()
            .partial_cmp(&number(y).unwrap())
            .unwrap_or(Ordering::Equal),
        (Some(Bson::String(x)), Some(Bson::String(y))) => x.cmp(y),
        _ => rank(a).cmp(&rank(b)),
    }
}

fn equal(a: Option<&Bson>, b: &Bson) -> bool {
    match (a, number(b)) {
        (Some(x), Some(n)) => number(x) == Some(n),
        (a, _) => a == Some(b) || (a.is_none() && *b == Bson::Null),
    }
}

fn matches(d: &Document, filter: &Document) -> bool {
    filter.iter().all(|(k, v)| {
        let field = d.get(k);
        match v {
            Bson::Document(ops) if is_operator_doc(v) => {
                ops.iter().all(|(op, arg)| match op.as_str() {
                    "$eq" => equal(field, arg),
                    "$ne" => !equal(field, arg),
                    "$lt" => field.is_some() && compare(field, Some(arg)) == Ordering::Less,
                    "$lte" => field.is_some() && compare(field, Some(arg)) != Ordering::Greater,
                    "$gt" => field.is_some() && compare(field, Some(arg)) == Ordering::Greater,
                    "$gte" => field.is_some() && compare(field, Some(arg)) != Ordering::Less,
                    "$in" => arg
                        .as_array()
                        .is_some_and(|a| a.iter().any(|x| equal(field, x))),
                    _ => false,
                })
            }
            _ => equal(field, v),
        }
    })
}

fn apply_update(d: &mut Document, update: &Document, inserting: bool) {
    if !update.keys().any(|k| k.starts_with('$')) {
        let id = d.get("_id").cloned();
        *d = update.clone();
        if let Some(id) = id {
            d.insert("_id", id);
        }
        return;
    }
    for (op, fields) in update {
        let Bson::Document(fields) = fields else {
            continue;
        };
        for (k, v) in fields {
            match op.as_str() {
                "$set" => {
                    d.insert(k, v.clone());
                }
                "$setOnInsert" if inserting => {
                    d.insert(k, v.clone());
                }
                "$unset" => {
                    d.remove(k);
                }
                "$max" if d.get(k).is_none() || compare(d.get(k), Some(v)) == Ordering::Less => {
                    d.insert(k, v.clone());
                }
                _ => {}
            }
        }
    }
}
