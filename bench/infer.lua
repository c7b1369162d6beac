-- wrk script: POST one image file to /infer as multipart/form-data (field "image").
--
--   wrk -c 16 -t 2 -d 10s -s bench/infer.lua http://127.0.0.1:8000/infer -- IMAGE
--
-- IMAGE is read once per wrk thread at start-up. done() prints one line,
-- "BENCH_JSON {...}", which bench/bench.py parses: requests, duration, errors (HTTP status >= 400
-- counted in response(), plus socket errors and timeouts) and latency percentiles in microseconds.

local threads = {}
local retry_ms = 0

-- WRK_HONOUR_RETRY_AFTER=1: after a 503 a connection waits Retry-After seconds before its next
-- request, as a well-behaved client does; without it, wrk retries at once (an abusive client).
if os.getenv("WRK_HONOUR_RETRY_AFTER") == "1" then
   function delay()
      local wait = retry_ms
      retry_ms = 0
      return wait
   end
end

function setup(thread)
   table.insert(threads, thread)
end

function init(args)
   local path = args[1]
   if path == nil then
      error("usage: wrk ... -s infer.lua URL -- IMAGE")
   end
   http_errors = 0
   statuses = {}

   local file = assert(io.open(path, "rb"))
   local data = file:read("*a")
   file:close()

   local boundary = "----cross-pictures-bench-7d9f2c41"
   wrk.method = "POST"
   wrk.headers["Content-Type"] = "multipart/form-data; boundary=" .. boundary
   wrk.body = "--" .. boundary .. "\r\n"
      .. 'Content-Disposition: form-data; name="image"; filename="image.jpg"\r\n'
      .. "Content-Type: image/jpeg\r\n\r\n"
      .. data
      .. "\r\n--" .. boundary .. "--\r\n"
end

function response(status, headers, body)
   if status == 503 then
      local after = headers["retry-after"] or headers["Retry-After"]
      retry_ms = (tonumber(after) or 1) * 1000
   end
   if status >= 400 then
      http_errors = http_errors + 1
      local key = tostring(status)
      statuses[key] = (statuses[key] or 0) + 1
   end
end

function done(summary, latency, requests)
   local http_total = 0
   local by_status = {}
   for _, thread in ipairs(threads) do
      http_total = http_total + (thread:get("http_errors") or 0)
      local counts = thread:get("statuses") or {}
      for status, count in pairs(counts) do
         by_status[status] = (by_status[status] or 0) + count
      end
   end
   local parts = {}
   for status, count in pairs(by_status) do
      table.insert(parts, string.format('"%s": %d', status, count))
   end
   local e = summary.errors
   io.write(string.format(
      'BENCH_JSON {"requests": %d, "duration_us": %d, "bytes": %d, "http_errors": %d, '
         .. '"statuses": {%s}, "socket_errors": {"connect": %d, "read": %d, "write": %d, '
         .. '"timeout": %d}, "latency_us": {"p50": %d, "p95": %d, "p99": %d, "max": %d, '
         .. '"mean": %.1f}}\n',
      summary.requests, summary.duration, summary.bytes, http_total, table.concat(parts, ", "),
      e.connect, e.read, e.write, e.timeout,
      latency:percentile(50), latency:percentile(95), latency:percentile(99), latency.max,
      latency.mean
   ))
end
