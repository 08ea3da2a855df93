#!/usr/bin/env python3
"""Writes the seed inputs of the text and frame targets into fuzz/corpus/<target>/ (the WAL
and checkpoint seeds come from the real persistence code:
`cargo run -p sokdo-persistence --example fuzz-seeds --features fuzzing -- fuzz/corpus`).

    fuzz/make-seeds.py          # from the repository root; idempotent (names are hashes)

Seeds: the JSON requests of docs/PROTOCOL.md, real HTTP requests for every route, masked
client frames as a browser sends them, and JWTs signed with the fuzz secret. A seed's file
name is the SHA-1 of its bytes, as libFuzzer names what it adds.
"""
import base64
import hashlib
import hmac
import json
import os
import re
import struct

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "corpus")
SECRET = b"sokdo-fuzz-secret"  # sokdo_engine::fuzz::JWT_SECRET


def put(target, data):
    if isinstance(data, str):
        data = data.encode()
    d = os.path.join(ROOT, target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, hashlib.sha1(data).hexdigest()), "wb") as f:
        f.write(data)


def b64(b):
    return base64.urlsafe_b64encode(b).rstrip(b"=").decode()


def jwt(claims, header=None):
    header = header or {"alg": "HS256", "typ": "JWT"}
    msg = b64(json.dumps(header).encode()) + "." + b64(json.dumps(claims).encode())
    sig = hmac.new(SECRET, msg.encode(), hashlib.sha256).digest()
    return msg + "." + b64(sig)


def protocol_requests():
    doc = os.path.normpath(os.path.join(ROOT, "..", "..", "docs", "PROTOCOL.md"))
    text = open(doc, encoding="utf-8").read()
    found = set()
    for m in re.finditer(r"\{\"op\"", text):
        depth, i = 0, m.start()
        for j in range(i, min(len(text), i + 2000)):
            depth += {"{": 1, "}": -1}.get(text[j], 0)
            if depth == 0:
                candidate = text[i : j + 1]
                try:
                    json.loads(candidate)
                    found.add(candidate)
                except ValueError:
                    pass
                break
    return sorted(found)


def mask(opcode, payload, fin=True, key=b"\x37\xfa\x21\x3d"):
    head = bytes([(0x80 if fin else 0) | opcode])
    n = len(payload)
    if n < 126:
        head += bytes([0x80 | n])
    elif n < 65536:
        head += bytes([0x80 | 126]) + struct.pack(">H", n)
    else:
        head += bytes([0x80 | 127]) + struct.pack(">Q", n)
    return head + key + bytes(b ^ key[i % 4] for i, b in enumerate(payload))


def http_seeds(token):
    ws = (
        "GET /ws{q} HTTP/1.1\r\nHost: 127.0.0.1:8080\r\nUpgrade: websocket\r\n"
        "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
        "Sec-WebSocket-Version: 13\r\n{h}\r\n"
    )
    yield ws.format(q="?token=" + token, h="")
    yield ws.format(q="", h="Authorization: Bearer " + token + "\r\n")
    yield ws.format(q="?user=alice", h="Origin: http://127.0.0.1:8080\r\n")
    yield ws.format(q="", h="") + mask(1, b'{"op":"ping"}').decode("latin-1")
    for path in ["/", "/healthz", "/readyz", "/metrics", "/nope", "/ws"]:
        yield f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n"
    body = '{"from":"bot","body":"hello"}'
    yield (
        "POST /api/rooms/lobby/messages HTTP/1.1\r\nHost: x\r\nX-Api-Key: fuzz-api-key\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n{body}"
    )
    yield f"GET /api/rooms/lobby/messages?limit=10&before_seq=5 HTTP/1.1\r\nAuthorization: Bearer {token}\r\n\r\n"
    for action, creds in [
        ("register", '{"user":"alice","password":"correct horse","name":"Alice"}'),
        ("login", '{"user":"alice","password":"correct horse"}'),
        ("password", '{"user":"alice","old_password":"a","new_password":"b"}'),
    ]:
        yield (
            f"POST /api/auth/{action} HTTP/1.1\r\nHost: x\r\nContent-Length: {len(creds)}\r\n\r\n{creds}"
        )
    yield "POST /debug/fault/panic-shard?shard=0 HTTP/1.1\r\n\r\n"
    yield "GET / HTTP/1.1\r\n" + "X-A: b\r\n" * 60 + "\r\n"
    yield "GET / HTTP/1.1\r\nContent-Length: 99999999999999999999\r\n\r\n"


def main():
    for req in protocol_requests():
        put("protocol_request", req)
    for req in [
        '{"op":"send","room":"r","body":"hi","client_msg_id":"c1","id":1}',
        '{"op":"join","room":"r","after_seq":3,"password":"pw","id":"a"}',
        '{"op":"rooms","query":"lo","joined":true,"limit":10,"cursor":"x","id":1e999}',
        '{"op":"history","room":"r","before_seq":10,"limit":100,"id":-1.5}',
        '{"op":"search","room":"r","query":"q","limit":5}',
        '{"op":"update_room","room":"r","title":"t","private":true,"password":null}',
    ]:
        put("protocol_request", req)

    now = 1_800_000_000  # 2027: in the future for years
    good = jwt({"sub": "alice", "name": "Alice", "exp": now})
    for token in [
        good,
        jwt({"sub": "bob", "exp": 1}),
        jwt({"sub": "carol"}),
        jwt({"sub": "", "exp": now}),
        jwt({"sub": "dave", "exp": now, "nbf": now, "iat": 5}),
        jwt({"sub": "eve", "exp": now}, {"alg": "none"}),
        jwt({"sub": "eve", "exp": now}, {"alg": "RS256", "typ": "JWT"}),
        good[:-3] + "AAA",
        "not.a.token",
    ]:
        put("jwt", b"\x00" + token.encode())
    for claims in [
        '{"sub":"alice","exp":1800000000}',
        '{"sub":"alice","name":"Alice","exp":1800000000,"nbf":1,"iat":1}',
        '{"alg":"HS256","typ":"JWT","crit":["x"]}\n{"sub":"a","exp":1800000000}',
    ]:
        put("jwt", b"\x01" + claims.encode())

    for head in http_seeds(good):
        put("http_head", head.encode("latin-1"))

    text = mask(1, b'{"op":"send","room":"r","body":"hi"}')
    frames = [
        text,
        mask(1, b'{"op":"send","room":"r","body":"\xed\x95\x9c\xea\xb8\x80"}'),
        mask(1, b"\xce\xba\xe1\xbd\xb9", fin=False) + mask(0, b"\xcf\x83\xce\xbc\xce\xb5"),
        mask(2, b"\x00\x01\x02"),
        mask(9, b"ping") + mask(10, b""),
        mask(8, struct.pack(">H", 1000) + b"bye"),
        mask(8, b""),
        mask(1, b"x" * 200) + mask(1, b"y" * 70000),
        text[:5],
        bytes([0x81, 0x05]) + b"hello",  # unmasked
    ]
    for i, f in enumerate(frames):
        put("ws_frames", bytes([i * 7 % 256, i * 13 % 256]) + f)


if __name__ == "__main__":
    main()
