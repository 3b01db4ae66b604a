-- wrk script for bench/run: POST /moderation/ban with a user token.
--
-- Two modes, chosen by environment variables:
--
--   BENCH_TOKEN=<jwt>          one token on every request (throughput);
--                              the token may also be given as the first
--                              script argument: wrk ... URL -- <jwt>
--   BENCH_TOKENS=<file>        one token per line; each request takes the
--                              next line, in turn (distinct moderators for
--                              the memory run; distinct tokens of one
--                              moderator for the "new token" runs).  With BENCH_COUNT=N the
--                              thread stops after N responses (bench/run
--                              then interrupts wrk), so no token is reused
--                              except by the requests still in flight.
--
-- BENCH_BODY overrides the JSON body.  Every response whose status is not
-- 201 is counted; done() prints one machine-readable line that bench/run
-- parses:
--
--   BENCH requests=N duration_us=N rps=N p50_us=N p99_us=N non201=N
--         first_bad=STATUS connect=N read=N write=N timeout=N

local body = os.getenv("BENCH_BODY") or
    '{"target_user_id":"spammer-42","timeout":30,' ..
    '"reason":"spam links in chat","delete_messages":"soft"}'

local tokens_file = os.getenv("BENCH_TOKENS")
local count = tonumber(os.getenv("BENCH_COUNT") or "0")

wrk.method = "POST"
wrk.body = body
wrk.headers["Content-Type"] = "application/json"

-- main state: remember the threads so done() can read their counters
local threads = {}

function setup(thread)
    table.insert(threads, thread)
end

-- thread state
non201 = 0
first_bad = 0
responses = 0

local tokens = nil
local next_token = 1

function init(args)
    local token = os.getenv("BENCH_TOKEN") or args[1]

    if tokens_file then
        -- the requests are formatted once here, so that wrk spends no more
        -- per request than with a single token
        tokens = {}
        for line in io.lines(tokens_file) do
            if #line > 0 then
                tokens[#tokens + 1] = wrk.format(nil, nil, {
                    ["Authorization"] = line,
                    ["Content-Type"] = "application/json",
                }, body)
            end
        end
        if #tokens == 0 then
            error("no tokens in " .. tokens_file)
        end

    elseif token then
        wrk.headers["Authorization"] = token

    else
        error("set BENCH_TOKEN or BENCH_TOKENS")
    end
end

if tokens_file then
    -- each request carries the next token of the file
    function request()
        local req = tokens[next_token]
        next_token = next_token + 1
        if next_token > #tokens then
            next_token = 1
        end
        return req
    end
end

function response(status, headers, resp_body)
    responses = responses + 1

    if status ~= 201 then
        non201 = non201 + 1
        if first_bad == 0 then
            first_bad = status
        end
    end

    if count > 0 and responses >= count then
        wrk.thread:stop()
    end
end

function done(summary, latency, requests)
    local bad, first = 0, 0

    for _, t in ipairs(threads) do
        bad = bad + t:get("non201")
        if first == 0 then
            first = t:get("first_bad")
        end
    end

    local secs = summary.duration / 1e6
    local rps = 0
    if secs > 0 then
        rps = summary.requests / secs
    end

    io.write(string.format(
        "BENCH requests=%d duration_us=%d rps=%.1f p50_us=%d p99_us=%d " ..
        "non201=%d first_bad=%d connect=%d read=%d write=%d timeout=%d\n",
        summary.requests, summary.duration, rps,
        latency:percentile(50), latency:percentile(99),
        bad, first, summary.errors.connect, summary.errors.read,
        summary.errors.write, summary.errors.timeout))
end
