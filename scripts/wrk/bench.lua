-- wrk script for scripts/bench.ts: one script for every workload of the benchmark.
--
--   wrk -t1 -c64 -d10s --latency --timeout 30s -s scripts/wrk/bench.lua http://127.0.0.1:PORT \
--     -- <mode> <prefix> <preloaded keys> <max requests>
--
-- <mode> is one of
--   raftkv-write  POST /v1/data {"k":"<prefix><n>","v":"<100 bytes>"}, n = 0, 1, 2, ... (unique)
--   raftkv-read   GET /v1/data/pre-<i> for a random preloaded key i (linearizable, the default)
--   raftkv-range  GET /v1/data?prefix=rng%2F: the 100 keys rng/000..rng/099 (linearizable)
--   raftkv-cas    PUT /v1/data/<prefix><n>?cas=0 {"v":"<100 bytes>"} (create only if absent)
--   etcd-write    POST <gw>/kv/put {"key":b64("<prefix><n>"),"value":b64(<100 bytes>)}
--   etcd-read     POST <gw>/kv/range {"key":b64("pre-<i>")} (linearizable, the default)
--   etcd-range    POST <gw>/kv/range {"key":b64("rng/"),"range_end":b64("rng0")}
--   etcd-cas      POST <gw>/kv/txn: compare create_revision of <prefix><n> with 0, then put it
-- where <gw> is the etcd JSON gateway prefix, "/v3" (etcd >= 3.4) unless a fifth argument says
-- otherwise. An Authorization header given to wrk (-H "Authorization: Bearer <token>") goes with
-- every request (wrk itself adds -H headers only to requests built from its defaults). Each thread numbers its writes with its own counter, so keys are unique when
-- <prefix> is unique per thread and cell (bench.ts runs one thread, -t1).
--
-- The thread stops after <max requests> requests (a bound besides -d; the few requests that
-- connections send after it before the thread stops are GET /health). done() prints one line
--   WRK_RESULT requests=... duration_us=... p50_us=... p99_us=... p999_us=... max_us=...
--     mean_us=... non2xx=... connect=... read=... write=... timeout=... status=...
-- that scripts/bench_lib.ts parses (non2xx counts every response outside 200-299).

-- The 100-byte value of every write; keep in sync with VALUE in scripts/bench_lib.ts.
local VALUE = string.rep("0123456789", 10)
local B64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"

local function b64(s)
  local out = {}
  for i = 1, #s, 3 do
    local a, b, c = s:byte(i, i + 2)
    local n = a * 65536 + (b or 0) * 256 + (c or 0)
    local c1 = math.floor(n / 262144) % 64
    local c2 = math.floor(n / 4096) % 64
    local c3 = math.floor(n / 64) % 64
    local c4 = n % 64
    out[#out + 1] = B64:sub(c1 + 1, c1 + 1) .. B64:sub(c2 + 1, c2 + 1) ..
      (b and B64:sub(c3 + 1, c3 + 1) or "=") .. (c and B64:sub(c4 + 1, c4 + 1) or "=")
  end
  return table.concat(out)
end

local function preloaded(i)
  return string.format("pre-%05d", i)
end

-- Main (setup/done) environment: the threads, to collect their counters.
local threads = {}

function setup(thread)
  threads[#threads + 1] = thread
  if #threads == 1 then
    -- wrk calls request() once on the first thread to check the script (script_verify_request,
    -- after init()) and throws that request away; start that thread at -1 so that the first
    -- request it sends is number 0 and exactly <max requests> writes go out.
    thread:set("sent", -1)
  end
end

-- Thread environment. Globals, so that done() can read them with thread:get().
sent = 0
non2xx = 0

local mode, prefix, keys, limit, gateway
local headers = { ["Content-Type"] = "application/json" }
local get_headers = {}
local value64 = b64(VALUE)

function init(args)
  mode = args[1] or "raftkv-read"
  prefix = args[2] or "w-"
  keys = tonumber(args[3] or "10000")
  limit = tonumber(args[4] or "1000000")
  gateway = args[5] or "/v3"
  local modes = {
    ["raftkv-write"] = true, ["raftkv-read"] = true, ["raftkv-range"] = true,
    ["raftkv-cas"] = true, ["etcd-write"] = true, ["etcd-read"] = true, ["etcd-range"] = true,
    ["etcd-cas"] = true,
  }
  if not modes[mode] then
    error("unknown mode " .. mode)
  end
  for name, value in pairs(wrk.headers) do
    if string.lower(name) == "authorization" then
      headers["Authorization"] = value
      get_headers["Authorization"] = value
    end
  end
  math.randomseed(12345)
end

function request()
  if sent >= limit then
    -- Past the bound, until the thread stops: a harmless request that writes nothing.
    return wrk.format("GET", "/health", {}, nil)
  end
  local n = sent
  sent = sent + 1
  if mode == "raftkv-write" then
    return wrk.format("POST", "/v1/data", headers,
      '{"k":"' .. prefix .. n .. '","v":"' .. VALUE .. '"}')
  elseif mode == "raftkv-read" then
    return wrk.format("GET", "/v1/data/" .. preloaded(math.random(0, keys - 1)), get_headers, nil)
  elseif mode == "raftkv-range" then
    return wrk.format("GET", "/v1/data?prefix=rng%2F", get_headers, nil)
  elseif mode == "raftkv-cas" then
    return wrk.format("PUT", "/v1/data/" .. prefix .. n .. "?cas=0", headers,
      '{"v":"' .. VALUE .. '"}')
  elseif mode == "etcd-write" then
    return wrk.format("POST", gateway .. "/kv/put", headers,
      '{"key":"' .. b64(prefix .. n) .. '","value":"' .. value64 .. '"}')
  elseif mode == "etcd-range" then
    return wrk.format("POST", gateway .. "/kv/range", headers,
      '{"key":"' .. b64("rng/") .. '","range_end":"' .. b64("rng0") .. '"}')
  elseif mode == "etcd-cas" then
    local key64 = b64(prefix .. n)
    return wrk.format("POST", gateway .. "/kv/txn", headers,
      '{"compare":[{"key":"' .. key64 .. '","target":"CREATE","result":"EQUAL",' ..
      '"create_revision":"0"}],"success":[{"request_put":{"key":"' .. key64 ..
      '","value":"' .. value64 .. '"}}]}')
  else
    return wrk.format("POST", gateway .. "/kv/range", headers,
      '{"key":"' .. b64(preloaded(math.random(0, keys - 1))) .. '"}')
  end
end

function response(status, _headers, _body)
  if status < 200 or status > 299 then
    non2xx = non2xx + 1
  end
  if sent >= limit then
    wrk.thread:stop()
  end
end

function done(summary, latency, _requests)
  local bad = 0
  local total = 0
  for _, thread in ipairs(threads) do
    bad = bad + (thread:get("non2xx") or 0)
    total = total + (thread:get("sent") or 0)
  end
  local e = summary.errors
  io.write(string.format(
    "WRK_RESULT requests=%d duration_us=%d p50_us=%d p99_us=%d p999_us=%d max_us=%d " ..
      "mean_us=%.1f non2xx=%d connect=%d read=%d write=%d timeout=%d status=%d sent=%d\n",
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(99),
    latency:percentile(99.9), latency.max, latency.mean, bad, e.connect, e.read, e.write,
    e.timeout, e.status, total))
end
