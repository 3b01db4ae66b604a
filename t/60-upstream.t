#!/usr/bin/perl

# What goes upstream (SPEC section 7) and what comes back (section 8):
# api_key exactly once, the server token, stream-auth-type, Content-Type and
# X-Stream-Client set by the module; client headers by allowlist only; the
# body byte for byte with the actor stamped and a matching Content-Length,
# whatever the client's framing; keepalive connections to Stream; Stream's
# answers passed through unchanged; and upstream failures (refused, timed
# out, cut off) answered as APIError JSON, never an HTML page.

use strict;
use warnings;

use Test::More;
use JSON::PP;
use Time::HiRes qw(time sleep);

use lib 't/lib';
use StreamMod::Test;

my $t = StreamMod::Test->new;
my $KEY = $t->api_key;

$t->write_policy({
    rules => [ { effect => 'allow', actions => ['*'], users => ['*'] } ],
});

# $o{upstream}: lines of the upstream block; $o{proxy}: lines for both
# gateway locations; $o{server}: server-level lines and locations
sub conf {
    my (%o) = @_;
    my $up = join "\n", map { "        $_" }
        @{ $o{upstream} || ['server 127.0.0.1:%%EMU_PORT%%;'] };
    my $proxy = join "\n", map { "            $_" } @{ $o{proxy} || [] };
    my $srv = $o{server} // '';
    return <<"CONF";
http {
@{[ $t->http_preamble ]}
    stream_mod_api_key %%API_KEY%%;
    stream_mod_api_secret_file %%SECRET_FILE%%;
    stream_mod_policy %%DIR%%/policy.json;

    upstream stream_api {
$up
    }

    server {
        listen 127.0.0.1:%%PORT%%;
        server_name localhost;
$srv

        location /moderation/ {
            stream_mod on;
            proxy_pass http://stream_api;
$proxy
        }

        location /calls/ {
            stream_mod on;
            proxy_pass http://stream_api;
$proxy
        }
    }
}
CONF
}

sub reload_ok {
    my ($text, $name) = @_;
    ok($t->reload($text), "reload: $name") or diag($t->error_log);
}

$t->write_config(conf())->run;

my $token = $t->user_token('mod-1');
my $SERVER = $t->server_token;

# sends one gateway request; returns (response, the one upstream record)
sub through {
    my ($method, $path, %o) = @_;
    $t->reset_upstream;
    my @h = (Authorization => $o{auth} // $token, @{ $o{headers} || [] });
    my $r = $t->request($method, $path, headers => \@h,
        (exists $o{body} ? (body => $o{body}) : ()), %{ $o{request} || {} });
    my @u = $t->upstream_requests;
    return ($r, $u[-1], scalar @u);
}

sub header_names {
    my ($u) = @_;
    return [ sort map { lc } @{ $u->{header_order} || [] } ];
}

# ---------------------------------------------------------------------------
# the headers Stream sees

{
    my ($r, $u, $n) = through(POST => '/moderation/ban?api_key=evil',
        body => '{"target_user_id":"u-2"}',
        headers => [
            'Content-Type'        => 'application/json; charset=utf-8',
            'Accept'              => 'application/json',
            'Accept-Encoding'     => 'identity',
            'X-Client-Request-Id' => 'req-1',
            'X-Client-Request-Id' => 'req-2',
            'Cookie'              => 'session=abc',
            'X-Forwarded-For'     => '203.0.113.7',
            'X-Real-IP'           => '203.0.113.7',
            'Forwarded'           => 'for=203.0.113.7',
            'Origin'              => 'https://app.example',
            'Referer'             => 'https://app.example/mod',
            'User-Agent'          => 'test-agent/1.0',
            'stream-auth-type'    => 'anonymous',
            'Stream-Auth-Type'    => 'anonymous',
            'X-Stream-Client'     => 'spoofed/9',
            'Api-Key'             => 'evil',
            'X-Api-Key'           => 'evil',
            'X-Custom'            => 'x',
            'Proxy-Authorization' => 'Basic eDp5',
            'X-HTTP-Method-Override' => 'DELETE',
            'X-Original-URL'      => '/api/v2/users/deactivate',
            'If-None-Match'       => '"x"',
            'Range'               => 'bytes=0-1',
        ]);
    is($r->{status}, 201, 'ban with many client headers answers 201') or diag($r->{body});
    is($n, 1, 'one upstream request');

    is($u->{method}, 'POST', 'method');
    is($u->{path}, '/api/v2/moderation/ban', 'path');
    is($u->{raw_query}, "api_key=$KEY", 'query: api_key exactly once, ours');
    is_deeply($u->{query}{api_key}, [$KEY], 'one api_key value');

    is_deeply(header_names($u), [ sort qw(host connection content-length accept
        accept-encoding x-client-request-id authorization stream-auth-type content-type
        x-stream-client) ], 'exactly the allowlisted and module headers reach Stream');

    my $h = $u->{headers};
    is_deeply($h->{authorization}, [$SERVER], 'Authorization: the server token, exactly');
    is_deeply($t->verify_server_token($h->{authorization}[0]), { server => JSON::PP::true },
        'the server token verifies with the API secret');
    is($u->{auth}{kind}, 'server', 'Stream sees a server token');
    is_deeply($h->{'stream-auth-type'}, ['jwt'], 'stream-auth-type: jwt, once');
    is_deeply($h->{'content-type'}, ['application/json'], 'Content-Type: application/json, once');
    is_deeply($h->{'x-stream-client'}, ['ngx_stream_mod/0.1.0'], 'X-Stream-Client, once');
    is_deeply($h->{accept}, ['application/json'], 'Accept passes');
    is_deeply($h->{'accept-encoding'}, ['identity'], 'Accept-Encoding passes');
    is_deeply($h->{'x-client-request-id'}, ['req-1'], 'X-Client-Request-Id: the first one only');
    is_deeply($h->{'content-length'}, [ length $u->{body} ], 'Content-Length matches the body');
    is($u->{body}, '{"banned_by_id":"mod-1","target_user_id":"u-2"}', 'stamped body');
    unlike(JSON::PP->new->canonical->encode($u), qr/\Q$token\E/,
        'the user token is nowhere in the upstream request');
    is($u->{status}, 201, 'the emulator accepted the request');
    ok(!exists $u->{error}, 'the emulator found nothing wrong') or diag($u->{error});
}

# header names are matched without regard to case; an allowlisted header
# with an empty value is harmless
{
    my ($r, $u) = through(POST => '/moderation/mute', body => '{"target_ids":["u-2"]}',
        headers => [ 'content-type' => 'APPLICATION/JSON', 'accept' => '*/*',
            'X-CLIENT-REQUEST-ID' => 'abc-123', 'AUTHORIZATION-X' => 'y' ]);
    is($r->{status}, 201, 'lower- and upper-case header names') or diag($r->{body});
    is_deeply($u->{headers}{accept}, ['*/*'], 'accept (lower case) passes');
    is_deeply($u->{headers}{'x-client-request-id'}, ['abc-123'],
        'X-CLIENT-REQUEST-ID (upper case) passes');
    is_deeply($u->{headers}{'content-type'}, ['application/json'],
        'the client\'s Content-Type spelling is replaced');
    ok(!exists $u->{headers}{'authorization-x'}, 'a look-alike of Authorization is dropped');
}

# a GET action: no body, no Content-Length
{
    my ($r, $u) = through(GET => '/moderation/blocked',
        headers => [ Accept => 'application/json', Cookie => 'a=b' ]);
    is($r->{status}, 200, 'blocked_users answers 200') or diag($r->{body});
    is_deeply(header_names($u), [ sort qw(host connection accept authorization
        stream-auth-type content-type x-stream-client) ],
        'GET: the same headers, without Content-Length');
    is($u->{body}, '', 'GET: no body');
    is($u->{raw_query}, "api_key=$KEY&user_id=mod-1", 'GET: query');
}

# request_permission runs as the caller: its own token, no server token
{
    my ($r, $u) = through(POST => '/calls/default/c-1/request_permission',
        auth => "Bearer $token", body => '{"permissions":["screenshare"]}',
        headers => [ 'Content-Type' => 'application/json', Cookie => 'a=b',
            'X-Forwarded-For' => '1.2.3.4' ]);
    is($r->{status}, 201, 'request_permission answers 201') or diag($r->{body});
    is_deeply($u->{headers}{authorization}, [$token],
        'request_permission: the caller\'s token, once, without "Bearer "');
    is_deeply(header_names($u), [ sort qw(host connection content-length authorization
        stream-auth-type content-type x-stream-client) ],
        'request_permission: the same allowlist');
    is($u->{raw_query}, "api_key=$KEY", 'request_permission: api_key');
    is($u->{body}, '{"permissions":["screenshare"]}', 'request_permission: body unchanged');
}

# ---------------------------------------------------------------------------
# the body, byte for byte, whatever the client's framing

{
    my $body = qq({\n  "target_user_id" : "u-2",\t"reason":"sp\\u00e4m \\ud83d\\ude00 \xc3\xa9 \\"q\\" \\\\",\r\n)
      . qq(  "timeout" : 30 , "extra": [1.50E+1, -0.0, 1e300, 9007199254740993, {"k":null}] ,"shadow":false}\n);
    my ($r, $u) = through(POST => '/moderation/ban', body => $body,
        headers => [ 'Content-Type' => 'application/json' ]);
    is($r->{status}, 201, 'an oddly formatted body answers 201') or diag($r->{body});
    my $want = '{"banned_by_id":"mod-1",' . substr($body, 1);
    is($u->{body}, $want, 'stamped after the brace; every other byte as sent');
    is_deeply($u->{headers}{'content-length'}, [ length $want ], 'Content-Length of the stamped body');
}

{
    my $body = '  {"target_user_id":"u-2"}  ';
    my ($r, $u) = through(POST => '/moderation/ban', body => $body,
        headers => [ 'Content-Type' => 'application/json' ]);
    is($r->{status}, 201, 'a body with surrounding whitespace') or diag($r->{body});
    is($u->{body}, '  {"banned_by_id":"mod-1","target_user_id":"u-2"}  ',
        'surrounding whitespace kept');
}

{
    # the actor already present and equal: not stamped twice, untouched
    my $body = '{"target_ids":["u-2"],"user_id":"mod-1"}';
    my ($r, $u) = through(POST => '/moderation/mute', body => $body,
        headers => [ 'Content-Type' => 'application/json' ]);
    is($r->{status}, 201, 'mute with its actor given') or diag($r->{body});
    is($u->{body}, $body, 'the body is forwarded unchanged');
}

{
    # an empty body on an action with an actor: {} stamped
    my ($r, $u) = through(POST => '/moderation/users/u-2/reactivate');
    is($r->{status}, 201, 'reactivate_user without a body') or diag($r->{body});
    is($u->{body}, '{"created_by_id":"mod-1"}', 'an empty body becomes the stamped {}');
    is_deeply($u->{headers}{'content-length'}, [25], 'Content-Length 25');

    # and without an actor: {}
    ($r, $u) = through(POST => '/calls/default/c-1/mark_ended',
        body => '', headers => [ 'Content-Type' => 'application/json' ]);
    is($r->{status}, 201, 'end_call with Content-Length: 0') or diag($r->{body});
    is($u->{body}, '{}', 'an empty body becomes {}');
    is_deeply($u->{headers}{'content-type'}, ['application/json'], 'with Content-Type');
}

{
    # a chunked client body reaches Stream with a Content-Length
    my $body = '{"target_user_id":"u-2","reason":"chunked"}';
    my $port = $t->port;
    my $chunks = join '', map { sprintf("%x\r\n%s\r\n", length, $_) }
        substr($body, 0, 10), substr($body, 10, 7), substr($body, 17);
    $t->reset_upstream;
    my $r = $t->raw_request("POST /moderation/ban HTTP/1.1\r\nHost: 127.0.0.1:$port\r\n"
        . "Authorization: $token\r\nContent-Type: application/json\r\n"
        . "Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n${chunks}0\r\n\r\n");
    is($r->{status}, 201, 'a chunked request body answers 201') or diag($r->{raw});
    my $u = $t->last_upstream;
    ok(!$u->{chunked}, 'upstream: not chunked');
    ok(!exists $u->{headers}{'transfer-encoding'}, 'upstream: no Transfer-Encoding');
    is($u->{body}, '{"banned_by_id":"mod-1",' . substr($body, 1), 'upstream: the stamped body');
    is_deeply($u->{headers}{'content-length'}, [ length($body) + length q("banned_by_id":"mod-1",) ],
        'upstream: Content-Length of the stamped body');
}

{
    # Expect: 100-continue is between the client and NGINX
    my ($r, $u) = through(POST => '/moderation/ban', body => '{"target_user_id":"u-2"}',
        headers => [ 'Content-Type' => 'application/json', Expect => '100-continue' ]);
    is($r->{status}, 201, 'Expect: 100-continue answers 201') or diag($r->{raw});
    ok(!exists $u->{headers}{expect}, 'Expect is not forwarded');
}

{
    # a body sent slowly, in pieces
    my $body = '{"target_user_id":"u-2","reason":"' . ('r' x 3000) . '"}';
    my $port = $t->port;
    $t->reset_upstream;
    require IO::Socket::INET;
    my $s = IO::Socket::INET->new(PeerAddr => '127.0.0.1', PeerPort => $port, Proto => 'tcp')
        or die "connect: $!";
    binmode $s;
    print $s "POST /moderation/ban HTTP/1.1\r\nHost: 127.0.0.1:$port\r\n"
        . "Authorization: $token\r\nContent-Type: application/json\r\n"
        . "Content-Length: " . length($body) . "\r\nConnection: close\r\n\r\n"
        . substr($body, 0, 1000);
    $s->flush;
    sleep 0.2;
    print $s substr($body, 1000);
    $s->flush;
    local $/;
    my $resp = <$s> // '';
    close $s;
    like($resp, qr{\AHTTP/1\.1 201 }, 'a body in two pieces answers 201');
    is($t->last_upstream && $t->last_upstream->{body}, '{"banned_by_id":"mod-1",' . substr($body, 1),
        'a body in two pieces: reassembled and stamped');
}

{
    # near the 64k default limit: NGINX buffers it to a temporary file; the
    # gate forwards it intact
    my @ids = map { sprintf 'user-%05d', $_ } 1 .. 1000;
    my $body = '{"target_ids":' . JSON::PP->new->encode(\@ids) . ',"pad":"'
      . ('p' x (60_000 - 20 * 1000)) . '"}';
    cmp_ok(length $body, '>', 50_000, 'a large body (' . length($body) . ' bytes)');
    cmp_ok(length $body, '<', 65_536, 'under the 64k default');
    my ($r, $u) = through(POST => '/moderation/mute', body => $body,
        headers => [ 'Content-Type' => 'application/json' ]);
    is($r->{status}, 201, 'the large body answers 201') or diag($r->{body});
    my $want = '{"user_id":"mod-1",' . substr($body, 1);
    ok($u->{body} eq $want, 'the large body arrives byte for byte, stamped');
    is_deeply($u->{headers}{'content-length'}, [ length $want ], 'its Content-Length');
}

# ---------------------------------------------------------------------------
# Stream's answers pass through unchanged

{
    my ($r, $u) = through(POST => '/moderation/ban', body => '{"target_user_id":"u-2"}',
        headers => [ 'Content-Type' => 'application/json' ]);
    is($r->{status}, 201, 'Stream\'s status');
    is_deeply($r->{json}, { duration => '0.42ms' }, 'Stream\'s body');
    is_deeply($r->{headers}{'content-type'}, ['application/json;charset=utf-8'],
        'Stream\'s Content-Type');
    is_deeply($r->{headers}{'x-ratelimit-limit'}, [1000], 'Stream\'s X-RateLimit-Limit');
    is_deeply($r->{headers}{'x-ratelimit-remaining'}, [999], 'Stream\'s X-RateLimit-Remaining');
    like($r->{headers}{'x-ratelimit-reset'}[0] // '', qr/\A\d{10}\z/,
        'Stream\'s X-RateLimit-Reset');
}

# Stream's own errors are its own, not the gate's
for my $c (
    [ 400, '{"code":4,"message":"stream says no","StatusCode":400,"duration":"1.23ms","more_info":"x","details":[1]}',
      'application/json;charset=utf-8', {} ],
    [ 401, '{"code":43,"message":"stream: bad token","StatusCode":401}', 'application/json', {} ],
    [ 403, '{"code":17,"message":"stream: forbidden"}', 'application/json', {} ],
    [ 404, '{"code":16,"message":"stream: not found"}', 'application/json', {} ],
    [ 429, '{"code":9,"message":"Too many requests"}', 'application/json',
      { 'Retry-After' => '17', 'X-RateLimit-Limit' => '60', 'X-RateLimit-Remaining' => '0',
        'X-RateLimit-Reset' => '1700000000' } ],
    [ 500, 'internal stream error, plain text', 'text/plain', {} ],
    [ 503, '<html>maintenance</html>', 'text/html', { 'Retry-After' => '120' } ],
    [ 200, '{"weird":true}', 'application/json', { 'X-Stream-Extra' => 'yes' } ],
) {
    my ($status, $body, $ct, $hdrs) = @$c;
    $t->emu_control({ status => $status, body => $body, content_type => $ct, headers => $hdrs });
    my ($r) = through(POST => '/moderation/ban', body => '{"target_user_id":"u-2"}',
        headers => [ 'Content-Type' => 'application/json' ]);
    $t->emu_control(undef);
    subtest "Stream's $status passes through" => sub {
        is($r->{status}, $status, 'status');
        is($r->{body}, $body, 'body byte for byte');
        is_deeply($r->{headers}{'content-type'}, [$ct], 'Content-Type');
        for my $name (sort keys %$hdrs) {
            is_deeply($r->{headers}{ lc $name }, [ $hdrs->{$name} ], $name);
        }
        ok(!exists $r->{headers}{'www-authenticate'}, 'no WWW-Authenticate added')
            if $status == 401;
    };
}

{
    # a large answer (buffered to a temporary file by NGINX) arrives intact
    my $big = '{"blocks":[' . join(',', map { qq({"user_id":"u-$_","blocked_user_id":"b-$_"}) } 1 .. 4000) . ']}';
    $t->emu_control({ status => 200, body => $big });
    my ($r) = through(GET => '/moderation/blocked');
    $t->emu_control(undef);
    is($r->{status}, 200, 'a large answer: 200');
    ok($r->{body} eq $big, 'a large answer (' . length($big) . ' bytes) arrives intact');
}

# ---------------------------------------------------------------------------
# keepalive to Stream: every request on a reused connection is rewritten

reload_ok(conf(upstream => [ 'server 127.0.0.1:%%EMU_PORT%%;', 'keepalive 4;' ],
        proxy => [ 'proxy_http_version 1.1;', 'proxy_set_header Connection "";' ]),
    'keepalive upstream');
{
    $t->reset_upstream;
    my @sent = (
        [ POST => '/moderation/ban', '{"target_user_id":"u-2","timeout":5}',
          '/api/v2/moderation/ban', '{"banned_by_id":"mod-1","target_user_id":"u-2","timeout":5}' ],
        [ GET => '/moderation/blocked', undef, '/api/v2/users/block', '' ],
        [ DELETE => '/moderation/ban?target_user_id=u-2', undef,
          '/api/v2/moderation/unban', '{"unbanned_by_id":"mod-1"}' ],
        [ POST => '/calls/default/c-1/kick', '{"user_id":"u-3"}',
          '/api/v2/video/call/default/c-1/kick', '{"kicked_by_id":"mod-1","user_id":"u-3"}' ],
        [ POST => '/calls/default/c-1/request_permission', '{"permissions":["send-audio"]}',
          '/api/v2/video/call/default/c-1/request_permission', '{"permissions":["send-audio"]}' ],
        [ POST => '/moderation/mute', '{"target_ids":["u-4"]}',
          '/api/v2/moderation/mute', '{"user_id":"mod-1","target_ids":["u-4"]}' ],
    );
    for my $s (@sent) {
        my ($m, $p, $b) = @$s;
        my $r = $t->request($m, $p, token => $token,
            defined $b ? (body => $b, headers => [ 'Content-Type' => 'application/json' ]) : ());
        ok($r->{status} && $r->{status} < 300, "keepalive: $m $p answers $r->{status}")
            or diag($r->{body});
    }
    my @u = $t->upstream_requests;
    is(scalar @u, scalar @sent, 'keepalive: one upstream request each');
    my %conns = map { $_->{conn} => 1 } @u;
    is(scalar keys %conns, 1, 'keepalive: all on one upstream connection');
    is_deeply([ map { $_->{conn_request} } @u ], [ 1 .. @sent ],
        'keepalive: requests 1, 2, 3 ... of that connection');
    for my $i (0 .. $#sent) {
        my ($m, $p, undef, $upath, $ubody) = @{ $sent[$i] };
        my $u = $u[$i] or next;
        is($u->{http_version}, '1.1', "keepalive: $m $p over HTTP/1.1");
        is($u->{path}, $upath, "keepalive: $m $p path");
        is($u->{body}, $ubody, "keepalive: $m $p body");
        is($u->{status}, $m eq 'GET' ? 200 : 201, "keepalive: $m $p accepted by the emulator")
            or diag($u->{error});
        ok(!exists $u->{headers}{connection}, "keepalive: $m $p without Connection: close");
        my $want = $p =~ /request_permission/ ? $token : $SERVER;
        is_deeply($u->{headers}{authorization}, [$want], "keepalive: $m $p Authorization");
        is_deeply($u->{headers}{'content-length'}, length $ubody ? [ length $ubody ] : undef,
            "keepalive: $m $p Content-Length");
    }
}

# the operator's own proxy_set_header lines still apply
reload_ok(conf(proxy => [ 'proxy_set_header Host video.stream-io-api.com;',
        'proxy_set_header X-Gateway edge-1;' ]), 'proxy_set_header Host and X-Gateway');
{
    my ($r, $u) = through(POST => '/moderation/ban', body => '{"target_user_id":"u-2"}',
        headers => [ 'Content-Type' => 'application/json', 'X-Gateway' => 'spoofed' ]);
    is($r->{status}, 201, 'with proxy_set_header lines') or diag($r->{body});
    is_deeply($u->{headers}{host}, ['video.stream-io-api.com'], 'proxy_set_header Host applies');
    is_deeply($u->{headers}{'x-gateway'}, ['edge-1'],
        'proxy_set_header X-Gateway applies, the client\'s copy does not');
    is_deeply($u->{headers}{authorization}, [$SERVER], 'still the server token');
}

# ---------------------------------------------------------------------------
# upstream failures: APIError JSON, code -1

sub upstream_error {
    my ($r, $status, $msg, $name) = @_;
    subtest $name => sub {
        is($r->{status}, $status, "status $status") or diag($r->{raw} // $r->{error});
        is_deeply($r->{json}, { code => -1, message => $msg, StatusCode => $status,
            duration => '0.00ms', more_info => '', details => [] }, 'APIError, code -1');
        is_deeply($r->{headers}{'content-type'}, ['application/json'], 'Content-Type');
        unlike($r->{body}, qr/<html/i, 'no HTML page');
    };
}

$t->allow_log(qr/upstream timed out|prematurely closed|Connection refused|no live upstreams/);

# Stream slower than proxy_read_timeout: 504
reload_ok(conf(proxy => ['proxy_read_timeout 1s;']), 'proxy_read_timeout 1s');
{
    $t->emu_control({ delay_ms => 2500 });
    my $t0 = time;
    my ($r) = through(POST => '/moderation/ban', body => '{"target_user_id":"u-2"}',
        headers => [ 'Content-Type' => 'application/json' ], request => { timeout => 10 });
    my $took = time - $t0;
    $t->emu_control(undef);
    upstream_error($r, 504, 'upstream timed out', 'Stream too slow');
    cmp_ok($took, '<', 2.4, 'the 504 comes at proxy_read_timeout, not when Stream answers');
    sleep 1.5;    # let the emulator's slow answer finish
}

# Stream closes the connection without an answer: 502
{
    $t->emu_control({ close => JSON::PP::true });
    my ($r, undef, $n) = through(POST => '/moderation/ban', body => '{"target_user_id":"u-2"}',
        headers => [ 'Content-Type' => 'application/json' ]);
    $t->emu_control(undef);
    upstream_error($r, 502, 'upstream unavailable', 'Stream closes without answering');
    cmp_ok($n, '>=', 1, 'the request did reach the emulator');
}

# the error_page of the server does not turn these into HTML
reload_ok(conf(upstream => [ 'server 127.0.0.1:' . StreamMod::Test::_free_port() . ';' ],
        server => "        error_page 500 502 503 504 /50x.html;\n"
            . "        location = /50x.html { root %%DIR%%; }"),
    'an upstream nobody listens on, and a server error_page');
$t->write_file('50x.html', "<html><body>oops</body></html>\n");
{
    my ($r, undef, $n) = through(POST => '/moderation/ban', body => '{"target_user_id":"u-2"}',
        headers => [ 'Content-Type' => 'application/json' ]);
    upstream_error($r, 502, 'upstream unavailable', 'Stream unreachable, with an error_page');
    is($n, 0, 'nothing reached the emulator');

    ($r) = through(GET => '/moderation/blocked');
    upstream_error($r, 502, 'upstream unavailable', 'Stream unreachable: GET');

    ($r) = through(POST => '/calls/default/c-1/request_permission',
        body => '{"permissions":["send-audio"]}',
        headers => [ 'Content-Type' => 'application/json' ]);
    upstream_error($r, 502, 'upstream unavailable', 'Stream unreachable: request_permission');

    # the gate's own refusals come first: nothing is attempted
    ($r) = through(POST => '/moderation/ban', auth => 'nope', body => '{"target_user_id":"u-2"}',
        headers => [ 'Content-Type' => 'application/json' ]);
    is($r->{status}, 401, 'Stream unreachable: an unverified request is still 401');
}

$t->stop;

done_testing;
