#!/usr/bin/perl

# What goes upstream and what comes back (SPEC sections 7 and 8): exactly
# one Authorization (the server token, the same bytes every time),
# stream-auth-type, Content-Type, X-Stream-Client, client headers by
# allowlist only, Content-Length of the stamped body; Stream's answers
# (429 with its rate-limit headers, a 500 with malformed JSON) pass through
# unchanged; an upstream that is down, closes or is slow is a 502/504
# APIError JSON, never HTML, even under an inherited error_page; the API
# secret and the server token appear in no response and no log.

use strict;
use warnings;

use Test::More;
use JSON::PP;
use IO::Socket::INET;

use lib 't/lib';
use StreamMod::Test qw(mint_jwt api_error);

my $t = StreamMod::Test->new;
my $d = $t->dir;
my $KEY = $t->api_key;
my $secret = $t->api_secret;

$t->write_policy({ rules => [ { effect => 'allow', actions => ['*'], users => ['mod-1'] } ] });
$t->write_file('x.html', "<html><body>custom error page</body></html>\n", 0644);

# a port nothing listens on
my $closed_port = do {
    my $s = IO::Socket::INET->new(LocalAddr => '127.0.0.1', LocalPort => 0, Listen => 1, Proto => 'tcp')
        or die "no port: $@";
    my $p = $s->sockport;
    close $s;
    $p;
};

sub gateway_locations {
    my ($pass, $extra) = @_;
    $extra //= '';
    return <<"LOC";
        location /moderation/ {
            stream_mod on;
            $extra
            proxy_pass $pass;
        }

        location /calls/ {
            stream_mod on;
            $extra
            proxy_pass $pass;
        }
LOC
}

$t->write_config(<<"CONF");
http {
@{[ $t->http_preamble ]}
    stream_mod_api_key %%API_KEY%%;
    stream_mod_api_secret_file %%SECRET_FILE%%;
    stream_mod_policy %%DIR%%/policy.json;

    upstream stream_api {
        server 127.0.0.1:%%EMU_PORT%%;
    }

    server {
        listen 127.0.0.1:%%PORT%%;
        server_name localhost;
        root %%DIR%%;
        error_page 404 /x.html;

@{[ gateway_locations('http://stream_api') ]}
    }

    server {
        listen 127.0.0.1:%%PORT%%;
        server_name down;
        root %%DIR%%;
        error_page 500 502 503 504 /x.html;

@{[ gateway_locations("http://127.0.0.1:$closed_port") ]}
    }

    server {
        listen 127.0.0.1:%%PORT%%;
        server_name slow;
        root %%DIR%%;
        error_page 500 502 503 504 /x.html;

@{[ gateway_locations('http://stream_api', 'proxy_read_timeout 1s;') ]}
    }
}
CONF

$t->run;

my $token = $t->user_token('mod-1');
my @responses;    # every response, to look for secrets in

sub req {
    my ($method, $path, %o) = @_;
    my $r = $t->request($method, $path, token => $token, %o);
    push @responses, $r;
    return $r;
}

# --------------------------------------------------------------------------
# headers upstream: exactly which arrive

my $server_token = mint_jwt($secret, '{"alg":"HS256","typ":"JWT"}', '{"server":true}');

$t->reset_upstream;
my $r = req(POST => '/moderation/ban',
    body => '{"target_user_id":"u-2","reason":"spam"}',
    headers => [
        'Content-Type'        => 'application/json; charset=utf-8',
        'Accept'              => 'application/json',
        'Accept'              => 'text/html',
        'Accept-Encoding'     => 'gzip',
        'X-Client-Request-Id' => 'req-42',
        'Cookie'              => 'session=abc',
        'Origin'              => 'https://app.example',
        'X-Forwarded-For'     => '10.9.8.7',
        'X-Real-IP'           => '10.9.8.7',
        'Referer'             => 'https://app.example/page',
        'User-Agent'          => 'test-agent/1.0',
        'X-Foo'               => 'bar',
        'Proxy-Authorization' => 'Basic Zm9vOmJhcg==',
        'stream-auth-type'    => 'anonymous',
        'X-Stream-Client'     => 'evil/9',
        'Forwarded'           => 'for=10.9.8.7',
        'X-Api-Key'           => 'evil',
    ]);
is($r->{status}, 201, 'ban with many client headers: 201') or diag($r->{body});
my @up = $t->upstream_requests;
is(scalar @up, 1, 'ban with many client headers: one upstream request');
my $u = $up[-1] || { headers => {} };
my $h = $u->{headers};

is_deeply([ sort keys %$h ],
    [ sort qw(host connection content-length accept accept-encoding x-client-request-id
              authorization stream-auth-type content-type x-stream-client) ],
    'upstream headers: exactly Host, Connection, Content-Length, the three allowed client '
    . 'headers and the four the gateway sets')
    or diag(explain([ sort keys %$h ]));
is_deeply($h->{authorization}, [$server_token],
    'upstream: one Authorization, the server token of {"server":true}');
is_deeply($t->verify_server_token($h->{authorization}[0]), { server => JSON::PP::true },
    'upstream: the server token verifies with the API secret');
is($u->{auth}{kind}, 'server', 'upstream: Stream saw a server token');
is_deeply($h->{'stream-auth-type'}, ['jwt'], 'upstream: stream-auth-type: jwt (the client\'s dropped)');
is_deeply($h->{'content-type'}, ['application/json'], 'upstream: Content-Type: application/json');
is_deeply($h->{'x-stream-client'}, ['ngx_stream_mod/0.1.0'],
    'upstream: X-Stream-Client: ngx_stream_mod/0.1.0 (the client\'s dropped)');
is_deeply($h->{accept}, ['application/json'], 'upstream: Accept once, the first one the client sent');
is_deeply($h->{'accept-encoding'}, ['gzip'], 'upstream: Accept-Encoding passes');
is_deeply($h->{'x-client-request-id'}, ['req-42'], 'upstream: X-Client-Request-Id passes');
is_deeply($h->{host}, ['stream_api'], 'upstream: Host is the upstream\'s, not the client\'s');
is($u->{body}, '{"banned_by_id":"mod-1","target_user_id":"u-2","reason":"spam"}',
    'upstream: the body is the client\'s with banned_by_id stamped');
is_deeply($h->{'content-length'}, [ length $u->{body} ], 'upstream: Content-Length is the stamped body\'s length');
is($u->{raw_query}, "api_key=$KEY", 'upstream: query is api_key=KEY');
unlike(join("\n", map { @$_ } values %$h), qr/session=abc|10\.9\.8\.7|app\.example|test-agent|Zm9vOmJhcg|\bbar\b|evil/,
    'upstream: no value of a dropped client header arrives anywhere');

# header names in other cases, and a client without any allowed header
$t->reset_upstream;
$r = req(POST => '/moderation/mute', body => '{"target_ids":["u-2"]}',
    headers => [ 'content-type' => 'application/json', 'ACCEPT' => '*/*', 'x-client-request-id' => 'r-1',
                 'AUTHORIZATION-X' => 'nope' ]);
is($r->{status}, 201, 'mute with lower/upper-case header names: 201') or diag($r->{body});
$u = $t->last_upstream || { headers => {} };
is_deeply([ sort keys %{ $u->{headers} } ],
    [ sort qw(host connection content-length accept x-client-request-id
              authorization stream-auth-type content-type x-stream-client) ],
    'mute: header names match the allowlist case-insensitively; others dropped');
is_deeply($u->{headers}{accept}, ['*/*'], 'mute: ACCEPT arrives');

# a chunked client body: upstream gets the stamped body with Content-Length
$t->reset_upstream;
$r = $t->raw_request("POST /moderation/mute HTTP/1.1\r\nHost: localhost\r\n"
    . "Authorization: $token\r\nContent-Type: application/json\r\n"
    . "Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
    . "c\r\n{\"target_ids\r\na\r\n\":[\"u-2\"]}\r\n0\r\n\r\n");
push @responses, $r;
is($r->{status}, 201, 'mute with a chunked body: 201') or diag($r->{body});
$u = $t->last_upstream || { headers => {} };
is($u->{body}, '{"user_id":"mod-1","target_ids":["u-2"]}', 'chunked: upstream body stamped');
is_deeply($u->{headers}{'content-length'}, [ length $u->{body} ], 'chunked: upstream Content-Length matches');
ok(!$u->{headers}{'transfer-encoding'} && !$u->{chunked}, 'chunked: not chunked upstream');

# a GET action: no body, no Content-Length upstream
$t->reset_upstream;
$r = req(GET => '/moderation/blocked', headers => [ Accept => 'application/json' ]);
is($r->{status}, 200, 'blocked_users: 200');
$u = $t->last_upstream || { headers => {} };
ok(!$u->{headers}{'content-length'} || $u->{headers}{'content-length'}[0] eq '0',
    'blocked_users: no request body upstream');
is($u->{body}, '', 'blocked_users: empty body upstream');

# --------------------------------------------------------------------------
# the server token: computed once, the same bytes for every action

{
    my @auth;
    my @calls = (
        [ POST => '/moderation/ban', '{"target_user_id":"u-3"}' ],
        [ POST => '/moderation/unban?target_user_id=u-3', undef ],
        [ POST => '/moderation/block', '{"blocked_user_id":"u-3"}' ],
        [ GET  => '/moderation/blocked', undef ],
        [ POST => '/calls/default/c-1/kick', '{"user_id":"u-3"}' ],
        [ POST => '/calls/default/c-1/mark_ended', undef ],
        [ POST => '/moderation/users/u-3/deactivate', '{}' ],
    );
    for my $c (@calls) {
        $t->reset_upstream;
        my $r = req($c->[0], $c->[1], defined $c->[2]
            ? (body => $c->[2], headers => [ 'Content-Type' => 'application/json' ]) : ());
        my $u = $t->last_upstream || { headers => {} };
        push @auth, @{ $u->{headers}{authorization} || [] };
        is(scalar @{ $u->{headers}{authorization} || [] }, 1, "$c->[0] $c->[1]: one Authorization upstream");
    }
    is(scalar @auth, scalar @calls, 'server token: one per request');
    is_deeply([ grep { $_ ne $server_token } @auth ], [],
        'server token: the same bytes for every request, as Stream\'s server SDKs make it');
}

# --------------------------------------------------------------------------
# Stream's answers pass through unchanged

{
    my $body = '{"code":9,"message":"Too many requests, check response headers for more info.",'
        . '"StatusCode":429,"duration":"0.01ms","more_info":"https://getstream.io/rate-limits","details":[]}';
    $t->emu_control({ status => 429, body => $body, headers => {
        'X-RateLimit-Limit' => '60', 'X-RateLimit-Remaining' => '0',
        'X-RateLimit-Reset' => '1700000000', 'Retry-After' => '17' } });
    $t->reset_upstream;
    my $r = req(POST => '/moderation/ban', json => { target_user_id => 'u-2' });
    $t->emu_control(undef);
    is($r->{status}, 429, 'Stream\'s 429: the client gets 429');
    is($r->{body}, $body, 'Stream\'s 429: body byte for byte');
    is_deeply($r->{headers}{'content-type'}, ['application/json;charset=utf-8'],
        'Stream\'s 429: Stream\'s Content-Type');
    is_deeply($r->{headers}{'x-ratelimit-limit'}, ['60'], 'Stream\'s 429: X-RateLimit-Limit passes');
    is_deeply($r->{headers}{'x-ratelimit-remaining'}, ['0'], 'Stream\'s 429: X-RateLimit-Remaining passes');
    is_deeply($r->{headers}{'x-ratelimit-reset'}, ['1700000000'], 'Stream\'s 429: X-RateLimit-Reset passes');
    is_deeply($r->{headers}{'retry-after'}, ['17'], 'Stream\'s 429: Retry-After passes');
    is($t->upstream_count, 1, 'Stream\'s 429: the request did reach Stream once');
}

{
    my $body = '{"code": -1, "message": oops <html>';
    $t->emu_control({ status => 500, body => $body, content_type => 'application/json' });
    my $r = req(POST => '/moderation/ban', json => { target_user_id => 'u-2' });
    $t->emu_control(undef);
    is($r->{status}, 500, 'Stream\'s 500 with malformed JSON: the client gets 500');
    is($r->{body}, $body, 'Stream\'s 500 with malformed JSON: the body as Stream sent it');
    is_deeply($r->{headers}{'content-type'}, ['application/json'],
        'Stream\'s 500: Stream\'s Content-Type');
}

{
    my $body = '{"code":4,"message":"Ban failed with error: \"user does not exist\"","StatusCode":400,'
        . '"duration":"0.02ms","more_info":"","details":[]}';
    $t->emu_control({ status => 400, body => $body });
    my $r = req(POST => '/moderation/ban', json => { target_user_id => 'u-2' });
    $t->emu_control(undef);
    is($r->{status}, 400, 'Stream\'s 400: passes through');
    is($r->{body}, $body, 'Stream\'s 400: the body as Stream sent it');
}

{
    $t->reset_upstream;
    my $r = req(POST => '/moderation/ban', json => { target_user_id => 'u-2' });
    is($r->{status}, 201, 'Stream\'s 201: passes through');
    is_deeply($r->{headers}{'x-ratelimit-limit'}, ['1000'], 'Stream\'s 201: its X-RateLimit-Limit passes');
    is_deeply($r->{headers}{'x-ratelimit-remaining'}, ['999'], 'Stream\'s 201: its X-RateLimit-Remaining passes');
    like($r->{headers}{'x-ratelimit-reset'}[0] // '', qr/\A\d{10}\z/, 'Stream\'s 201: its X-RateLimit-Reset passes');
    like($r->{json}{duration} // '', qr/ms\z/, 'Stream\'s 201: Stream\'s body');
}

# --------------------------------------------------------------------------
# the gateway's own errors stay JSON under an inherited error_page

{
    my $r = $t->request(GET => '/not-a-gateway-path');
    is($r->{status}, 404, 'outside the gateway: 404');
    like($r->{body}, qr/custom error page/, 'outside the gateway: error_page 404 /x.html is active');

    $t->reset_upstream;
    $r = req(POST => '/moderation/nope', json => {});
    is($r->{status}, 404, 'unknown gateway path under error_page 404: 404');
    is_deeply($r->{json}, api_error(404, 16, 'no moderation endpoint at this path'),
        'unknown gateway path under error_page 404: APIError JSON code 16, not the HTML page');
    is_deeply($r->{headers}{'content-type'}, ['application/json'],
        'unknown gateway path under error_page 404: Content-Type application/json');
    is($t->upstream_count, 0, 'unknown gateway path: nothing upstream');
}

# --------------------------------------------------------------------------
# upstream down, closing, slow: 502/504 JSON code -1

sub gateway_failure {
    my ($name, $r, $status, $msg) = @_;
    is($r->{status}, $status, "$name: $status");
    is_deeply($r->{json}, api_error($status, -1, $msg), "$name: APIError JSON code -1 \"$msg\"")
        or diag($r->{body});
    is_deeply($r->{headers}{'content-type'}, ['application/json'], "$name: Content-Type application/json");
    unlike($r->{body}, qr/<html|custom error page/i, "$name: no HTML, error_page not applied");
}

$r = req(POST => '/moderation/ban', host => 'down', json => { target_user_id => 'u-2' });
gateway_failure('upstream port closed (error_page 502 at server level)', $r, 502, 'upstream unavailable');

$r = req(GET => '/moderation/blocked', host => 'down');
gateway_failure('upstream port closed, GET blocked', $r, 502, 'upstream unavailable');

$r = req(HEAD => '/moderation/blocked', host => 'down');
is($r->{status}, 405, 'HEAD on the down server: refused by the gateway before the upstream');

$t->emu_control({ close => 1 });
$t->reset_upstream;
$r = req(POST => '/moderation/ban', json => { target_user_id => 'u-2' });
$t->emu_control(undef);
gateway_failure('upstream closes without answering', $r, 502, 'upstream unavailable');
is($t->upstream_count, 1, 'upstream closes without answering: tried once (POST is not retried)');

$t->emu_control({ delay_ms => 2500 });
$r = req(POST => '/moderation/ban', host => 'slow', json => { target_user_id => 'u-2' }, timeout => 20);
$t->emu_control(undef);
gateway_failure('upstream slower than proxy_read_timeout 1s', $r, 504, 'upstream timed out');

# the emulator child still sleeping on the slow request finishes by itself

# --------------------------------------------------------------------------
# the secret and the server token are nowhere in a response or a log

$t->stop;

my $raw = join '', map { $_->{raw} // '' } @responses;
ok(length $raw > 1000, 'responses were collected (' . scalar(@responses) . ')');
unlike($raw, qr/\Q$secret\E/, 'no response (status line, headers, body) contains the API secret');
unlike($raw, qr/\Q$server_token\E/, 'no response contains the server token');
my $sig = (split /\./, $server_token)[2];
unlike($raw, qr/\Q$sig\E/, 'no response contains the server token\'s signature');
my $logs = $t->error_log . $t->access_log;
unlike($logs, qr/\Q$secret\E/, 'error.log and access.log do not contain the API secret');
unlike($logs, qr/\Q$sig\E/, 'error.log and access.log do not contain the server token');

done_testing;
