'use strict';
// Stand-in service for the engine tests. No dependencies: Node's http and net only.
//   GET  /health          200 {"status":"ok"}; 503 while STUB_START_DELAY_MS has not passed, when
//                          STUB_HEALTH=fail, after POST /health/fail, or while draining. Any path
//                          ending in /health answers the same (the frontend's health_path is /api/health)
//   POST /health/fail     makes /health answer 503 from now on (POST /health/ok undoes it)
//   GET  /metrics         Prometheus text: stub_http_requests_total, stub_http_in_flight_requests
//   GET  /sse             text/event-stream, one event every STUB_SSE_MS ms (default 200) with id and data
//   GET  /slow?ms=N       answers after N ms
//   GET  /version         {"version": STUB_VERSION, "hostname": ...}
//   GET  /probe?host=H&port=P   TCP connect with a 2 s timeout: 200 if it connected, 502 otherwise
//   POST /echo            reads the body, answers {"length", "version"} (any path ending in /echo; likewise
//                          /sse, /slow and /version, so the gateway's route prefixes reach them unchanged)
// SIGTERM/SIGINT, the drain contract every real service must follow (README, "Releasing"):
//   1. at once: /health answers 503; open SSE streams end with a final `event: shutdown` carrying
//      `retry: STUB_SSE_RETRY_MS` (default 250; the browser's EventSource reconnects after that long,
//      through the reloaded gateway, to the new container); every answer
//      carries `Connection: close`, so no upstream keepalive connection is reused;
//   2. for STUB_DRAIN_DELAY_MS (default 2000) keep accepting and serving: whoever still routes here (an
//      old gateway worker between `nginx -s reload` and its retirement, a caller with the alias cached)
//      is served;
//   3. then stop accepting, close idle connections, let in-flight requests finish, exit 0; all of it
//      well within stop_grace_seconds, after which Docker kills.
// Idle keepalive connections are kept STUB_KEEPALIVE_MS (default 5000, Node's own default): longer than
// the gateway's upstream keepalive_timeout (render/nginx.py), so nginx never reuses a connection the
// service is closing. STUB_HOST binds one address (default every address). Every step is logged to stdout.
const http = require('http');
const net = require('net');
const os = require('os');

const port = Number(process.env.PORT || 3000);
const version = process.env.STUB_VERSION || 'dev';
const sseMs = Number(process.env.STUB_SSE_MS || 200);
const startDelayMs = Number(process.env.STUB_START_DELAY_MS || 0);
const drainDelayMs = Number(process.env.STUB_DRAIN_DELAY_MS ?? 2000);
const keepAliveMs = Number(process.env.STUB_KEEPALIVE_MS || 5000);
const host = process.env.STUB_HOST || '0.0.0.0';
// `retry:` in the final event: when the browser's EventSource reconnects (it waits this long).
const sseRetryMs = Number(process.env.STUB_SSE_RETRY_MS || 250);
const startedAt = Date.now();

let healthFailed = process.env.STUB_HEALTH === 'fail';
let draining = false;
let inFlight = 0;
const requestsTotal = new Map(); // "method path code" -> count
const sseStreams = new Set();

function log(msg) {
  console.log(`${new Date().toISOString()} stub[${version}] ${msg}`);
}

function count(method, path, code) {
  const key = `${method} ${path} ${code}`;
  requestsTotal.set(key, (requestsTotal.get(key) || 0) + 1);
}

function send(res, code, body, type = 'application/json') {
  const text = typeof body === 'string' ? body : JSON.stringify(body);
  res.writeHead(code, { 'content-type': type, 'content-length': Buffer.byteLength(text) });
  res.end(text);
}

function metrics() {
  const lines = [
    '# HELP stub_http_requests_total HTTP requests answered, by method, path and status code.',
    '# TYPE stub_http_requests_total counter',
  ];
  for (const [key, n] of [...requestsTotal.entries()].sort()) {
    const [method, path, code] = key.split(' ');
    lines.push(`stub_http_requests_total{method="${method}",path="${path}",code="${code}"} ${n}`);
  }
  lines.push(
    '# HELP stub_http_in_flight_requests Requests being served right now.',
    '# TYPE stub_http_in_flight_requests gauge',
    `stub_http_in_flight_requests ${inFlight}`,
    '# HELP stub_sse_streams Open server-sent event streams.',
    '# TYPE stub_sse_streams gauge',
    `stub_sse_streams ${sseStreams.size}`,
    '',
  );
  return lines.join('\n');
}

function healthy() {
  if (draining) return [false, 'draining'];
  if (healthFailed) return [false, 'failed'];
  if (Date.now() - startedAt < startDelayMs) return [false, 'starting'];
  return [true, 'ok'];
}

function sse(req, res) {
  if (draining) {
    // A stream opened while draining ends at once: the client reconnects elsewhere.
    res.writeHead(200, { 'content-type': 'text/event-stream', 'cache-control': 'no-cache' });
    res.end(`event: shutdown\nretry: ${sseRetryMs}\ndata: ${JSON.stringify({ reason: 'draining', version })}\n\n`);
    return;
  }
  res.writeHead(200, {
    'content-type': 'text/event-stream',
    'cache-control': 'no-cache',
    connection: 'keep-alive',
  });
  let id = 0;
  const stream = {
    end(reason) {
      clearInterval(timer);
      res.write(`event: shutdown\nretry: ${sseRetryMs}\ndata: ${JSON.stringify({ reason, version })}\n\n`);
      res.end();
    },
  };
  const tick = () => {
    id += 1;
    res.write(`id: ${id}\ndata: ${JSON.stringify({ id, version, hostname: os.hostname(), at: Date.now() })}\n\n`);
  };
  const timer = setInterval(tick, sseMs);
  tick();
  sseStreams.add(stream);
  res.on('close', () => {
    clearInterval(timer);
    sseStreams.delete(stream);
  });
}

function probe(host, probePort, done) {
  const socket = net.connect({ host, port: probePort });
  let finished = false;
  const finish = (ok, detail) => {
    if (finished) return;
    finished = true;
    socket.destroy();
    done(ok, detail);
  };
  socket.setTimeout(2000, () => finish(false, 'timeout'));
  socket.on('connect', () => finish(true, 'connected'));
  socket.on('error', (err) => finish(false, err.code || String(err)));
}

const server = http.createServer((req, res) => {
  const url = new URL(req.url, 'http://stub');
  const path = url.pathname;
  const tail = path.slice(path.lastIndexOf('/'));  // /api/chats/sse -> /sse
  inFlight += 1;
  let counted = false;
  const done = () => {
    if (counted) return;
    counted = true;
    inFlight -= 1;
    count(req.method, path, res.statusCode);
  };
  res.on('finish', done);
  res.on('close', done);
  if (draining) res.setHeader('connection', 'close');

  // Any GET path ending in /health: each service's health_path (/health, /api/health) is served.
  if (req.method === 'GET' && (path === '/health' || path.endsWith('/health'))) {
    const [ok, status] = healthy();
    send(res, ok ? 200 : 503, { status, version });
  } else if (req.method === 'POST' && path === '/health/fail') {
    healthFailed = true;
    log('health forced to fail');
    send(res, 200, { status: 'failing' });
  } else if (req.method === 'POST' && path === '/health/ok') {
    healthFailed = false;
    send(res, 200, { status: 'ok' });
  } else if (req.method === 'GET' && path === '/metrics') {
    send(res, 200, metrics(), 'text/plain; version=0.0.4; charset=utf-8');
  } else if (req.method === 'GET' && tail === '/sse') {
    sse(req, res);
  } else if (req.method === 'POST' && tail === '/echo') {
    let length = 0;
    req.on('data', (chunk) => { length += chunk.length; });
    req.on('end', () => send(res, 200, { length, version }));
  } else if (req.method === 'GET' && tail === '/slow') {
    const ms = Math.max(0, Number(url.searchParams.get('ms') || 1000));
    setTimeout(() => send(res, 200, { slept_ms: ms, version }), ms);
  } else if (req.method === 'GET' && tail === '/version') {
    send(res, 200, { version, hostname: os.hostname() });
  } else if (req.method === 'GET' && path === '/probe') {
    const host = url.searchParams.get('host') || '';
    const probePort = Number(url.searchParams.get('port') || 0);
    if (!host || !(probePort > 0 && probePort < 65536)) {
      send(res, 400, { error: 'host and port are required' });
    } else {
      probe(host, probePort, (ok, detail) => send(res, ok ? 200 : 502, { host, port: probePort, ok, detail }));
    }
  } else {
    send(res, 404, { error: 'not found', path });
  }
});

// A real backlog: the default would make connects time out under load and look like swap failures.
server.keepAliveTimeout = keepAliveMs;
server.listen({ port, host, backlog: 511 }, () => {
  log(`listening on ${host}:${port} (pid ${process.pid}, uid ${process.getuid()}, gid ${process.getgid()})`);
});

function shutdown(signal) {
  if (draining) return;
  draining = true;
  log(`${signal}: draining; ${inFlight} in-flight request(s), ${sseStreams.size} SSE stream(s); accepting for ${drainDelayMs} ms`);
  for (const stream of [...sseStreams]) stream.end(signal);
  setTimeout(() => {
    // No new connections; idle keep-alive sockets are closed; busy ones finish their request first.
    log(`no longer accepting; ${inFlight} in-flight request(s)`);
    server.close(() => {
      log('drained: all connections closed; exiting 0');
      process.exit(0);
    });
    if (typeof server.closeIdleConnections === 'function') server.closeIdleConnections();
  }, drainDelayMs);
}

process.on('SIGTERM', () => shutdown('SIGTERM'));
process.on('SIGINT', () => shutdown('SIGINT'));
