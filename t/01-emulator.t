#!/usr/bin/perl
# Tests of the Stream API emulator alone (no NGINX, no module needed).

use strict;
use warnings;

use FindBin;
use lib "$FindBin::Bin/lib";

use Test::More;
use Time::HiRes qw(time);
use POSIX ();
use JSON::PP;
use StreamMod::Test;

my $t = StreamMod::Test->new->run_emulator_only;
my $KEY = $t->api_key;
my $SERVER = $t->server_token;

# a request to the emulator, authenticated as the server unless told otherwise
sub emu {
    my ($method, $path, %o) = @_;
    my $auth = exists $o{auth} ? delete $o{auth} : $SERVER;
    my @h = ('stream-auth-type' => 'jwt');
    push @h, Authorization => $auth if defined $auth;
    @h = () if delete $o{no_auth_headers};
    $o{headers} = [ @h, @{ $o{headers} || [] } ];
    return $t->emu_request($method, $path, %o);
}

# asserts an APIError answer
sub api_error {
    my ($res, $status, $code, $name, $msg_re) = @_;
    subtest $name => sub {
        is($res->{status}, $status, 'status');
        ok($res->{json}, 'JSON body') or diag($res->{raw});
        is($res->{json}{code}, $code, 'code');
        is($res->{json}{StatusCode}, $status, 'StatusCode');
        like($res->{headers}{'content-type'}[0] // '', qr{^application/json}, 'content type');
        ok(exists $res->{json}{$_}, "has $_") for qw(message duration more_info details);
        like($res->{json}{message}, $msg_re, 'message') if $msg_re;
    };
}

my $BAN = "/api/v2/moderation/ban?api_key=$KEY";

# --- a valid server-side ban, recorded byte for byte ----------------------

{
    $t->reset_upstream;
    my $body = '{"target_user_id":"bob","timeout":10,  "reason":"sp\u00e4m \u2603 é"}';
    my $res = emu('POST', $BAN, body => $body,
        headers => [ 'Content-Type' => 'application/json', 'X-Custom' => 'a', 'X-Custom' => 'b' ]);
    is($res->{status}, 201, 'ban: 201');
    is_deeply($res->{json}, { duration => '0.42ms' }, 'ban: body');
    is($res->{headers}{'x-ratelimit-limit'}[0], 1000, 'X-RateLimit-Limit');
    is($res->{headers}{'x-ratelimit-remaining'}[0], 999, 'X-RateLimit-Remaining');
    my $reset = $res->{headers}{'x-ratelimit-reset'}[0] // 0;
    ok($reset > time && $reset <= time + 61, 'X-RateLimit-Reset');
    like($res->{headers}{'content-type'}[0], qr{^application/json}, 'content type');

    is($t->upstream_count, 1, 'one record');
    my $r = $t->last_upstream;
    is($r->{body}, $body, 'body recorded byte for byte');
    is($r->{method}, 'POST', 'method');
    is($r->{path}, '/api/v2/moderation/ban', 'path');
    is($r->{raw_query}, "api_key=$KEY", 'raw query');
    is_deeply($r->{query}, { api_key => [$KEY] }, 'query');
    is_deeply($r->{headers}{'x-custom'}, [ 'a', 'b' ], 'repeated header kept in order');
    is_deeply($r->{header_order},
        [qw(Host stream-auth-type Authorization Content-Type X-Custom X-Custom Content-Length Connection)],
        'header order as received');
    is($r->{auth}{kind}, 'server', 'auth kind');
    is_deeply($r->{auth}{payload}, { server => JSON::PP::true }, 'auth payload');
    is($r->{auth}{header}{alg}, 'HS256', 'auth header');
    is($r->{status}, 201, 'status recorded');
    is($r->{operation}, 'ban', 'operation');
    is($r->{seq}, 1, 'seq');
    is_deeply($r->{unknown_fields}, [], 'no unknown fields');
    ok(!exists $r->{error}, 'no error');

    # Bearer prefix is accepted as well
    $res = emu('POST', $BAN, auth => "Bearer $SERVER", json => { target_user_id => 'bob' });
    is($res->{status}, 201, 'Bearer prefix accepted');
}

# --- api_key --------------------------------------------------------------

api_error(emu('POST', '/api/v2/moderation/ban', json => { target_user_id => 'x' }),
    401, 2, 'missing api_key', qr/api_key/);
api_error(emu('POST', "/api/v2/moderation/ban?api_key=$KEY&api_key=$KEY", json => { target_user_id => 'x' }),
    401, 2, 'api_key twice');
api_error(emu('POST', "/api/v2/moderation/ban?api_key=wrong", json => { target_user_id => 'x' }),
    401, 2, 'wrong api_key');
is($t->last_upstream->{status}, 401, 'rejected request is recorded');
is($t->last_upstream->{code}, 2, 'rejected request: code recorded');
like($t->last_upstream->{error}, qr/api_key/, 'rejected request: error recorded');

# --- stream-auth-type and the JWT -----------------------------------------

api_error(emu('POST', $BAN, no_auth_headers => 1, headers => [ Authorization => $SERVER ],
        json => { target_user_id => 'x' }), 401, 5, 'no stream-auth-type');
api_error(emu('POST', $BAN, no_auth_headers => 1,
        headers => [ 'Stream-Auth-Type' => 'anonymous', Authorization => $SERVER ],
        json => { target_user_id => 'x' }), 401, 5, 'stream-auth-type anonymous');
is(emu('POST', $BAN, no_auth_headers => 1, headers => [ 'STREAM-AUTH-TYPE' => 'jwt', Authorization => $SERVER ],
        json => { target_user_id => 'x' })->{status}, 201, 'stream-auth-type: header name case-insensitive');
api_error(emu('POST', $BAN, auth => undef, json => { target_user_id => 'x' }),
    401, 5, 'no Authorization');
is($t->last_upstream->{auth}{kind}, 'none', 'auth kind none recorded');
api_error(emu('POST', $BAN, headers => [ Authorization => $SERVER ], json => { target_user_id => 'x' }),
    401, 5, 'two Authorization headers');
api_error(emu('POST', $BAN, auth => $t->server_token(secret => 'not-the-secret'),
        json => { target_user_id => 'x' }), 401, 43, 'bad signature');
is($t->last_upstream->{auth}{kind}, 'invalid', 'auth kind invalid recorded');
api_error(emu('POST', $BAN, auth => $t->server_token(signature => 'AAAA'),
        json => { target_user_id => 'x' }), 401, 43, 'forced signature');
api_error(emu('POST', $BAN, auth => $t->token({ server => JSON::PP::true, exp => time - 10 }),
        json => { target_user_id => 'x' }), 401, 40, 'expired token');
api_error(emu('POST', $BAN, auth => $t->token({ server => JSON::PP::true, nbf => time + 100 }),
        json => { target_user_id => 'x' }), 401, 41, 'token not valid yet');
api_error(emu('POST', $BAN, auth => $t->token({ server => JSON::PP::true, iat => time + 100 }),
        json => { target_user_id => 'x' }), 401, 42, 'token issued in the future');
api_error(emu('POST', $BAN, auth => $t->token({ server => JSON::PP::true }, header => { alg => 'none' }),
        json => { target_user_id => 'x' }), 401, 5, 'alg none');
api_error(emu('POST', $BAN, auth => $t->token({ server => JSON::PP::true }, header => { alg => 'HS512' }),
        json => { target_user_id => 'x' }), 401, 5, 'alg HS512');
api_error(emu('POST', $BAN, auth => 'not.a-jwt', json => { target_user_id => 'x' }),
    401, 5, 'malformed token');
api_error(emu('POST', $BAN, auth => $t->token({ server => JSON::PP::false }),
        json => { target_user_id => 'x' }), 401, 5, 'neither server nor user_id');

# --- routes ---------------------------------------------------------------

api_error(emu('POST', "/api/v2/moderation/nope?api_key=$KEY", json => {}), 404, 16, 'unknown path');
api_error(emu('POST', "/api/v2/moderation/ban/?api_key=$KEY", json => {}), 404, 16, 'trailing slash');
{
    my $res = emu('GET', $BAN);
    api_error($res, 405, 4, 'wrong method');
    is($res->{headers}{allow}[0], 'POST', 'Allow header');
}
api_error(emu('DELETE', $BAN, json => { target_user_id => 'x' }), 405, 4, 'DELETE ban');

# --- body validation --------------------------------------------------------

api_error(emu('POST', $BAN, json => { timeout => 10 }), 400, 4, 'ban without target_user_id',
    qr/BanRequest\.target_user_id is a required field/);
api_error(emu('POST', $BAN, json => { target_user_id => '' }), 400, 4, 'empty target_user_id');
api_error(emu('POST', $BAN, body => '', headers => [ 'Content-Type' => 'application/json' ]),
    400, 4, 'empty body counts as {}', qr/target_user_id/);
api_error(emu('POST', $BAN, body => '{"target_user_id":"x","timeout":"10"}',
        headers => [ 'Content-Type' => 'application/json' ]), 400, 4, 'timeout "10"', qr/timeout/);
api_error(emu('POST', $BAN, body => '{"target_user_id":"x","timeout":10.5}',
        headers => [ 'Content-Type' => 'application/json' ]), 400, 4, 'timeout 10.5', qr/timeout/);
api_error(emu('POST', $BAN, body => '{"target_user_id":"x","timeout":60.0}',
        headers => [ 'Content-Type' => 'application/json' ]), 400, 4, 'timeout 60.0', qr/timeout/);
api_error(emu('POST', $BAN, body => '{"target_user_id":"x","timeout":1e2}',
        headers => [ 'Content-Type' => 'application/json' ]), 400, 4, 'timeout 1e2', qr/timeout/);
api_error(emu('POST', $BAN, json => { target_user_id => 'x', timeout => -1 }), 400, 4, 'timeout -1',
    qr/timeout must be 0 or greater/);
api_error(emu('POST', $BAN, body => '{"target_user_id":"x","timeout":99999999999999999999}',
        headers => [ 'Content-Type' => 'application/json' ]), 400, 4, 'timeout out of range');
is(emu('POST', $BAN, json => { target_user_id => 'x', timeout => 0 })->{status}, 201, 'timeout 0');
api_error(emu('POST', $BAN, json => { target_user_id => 'x', ip_ban => 'true' }), 400, 4, 'ip_ban "true"');
api_error(emu('POST', $BAN, json => { target_user_id => 7 }), 400, 4, 'target_user_id number');
api_error(emu('POST', $BAN, json => { target_user_id => 'x', delete_messages => 'x' }), 400, 4,
    'delete_messages enum', qr/delete_messages must be one of/);
is(emu('POST', $BAN, json => { target_user_id => 'x', delete_messages => 'hard' })->{status}, 201,
    'delete_messages hard');
api_error(emu('POST', $BAN, json => { target_user_id => 'x', banned_by => { name => 'n' } }), 400, 4,
    'nested object validated ($ref)', qr/banned_by\.id is a required field/);
api_error(emu('POST', $BAN, body => '{"target_user_id":"x","target_user_id":"y"}',
        headers => [ 'Content-Type' => 'application/json' ]), 400, 4, 'duplicate keys', qr/duplicate/);
api_error(emu('POST', $BAN, body => '{"target_user_id":"x","Target_User_Id":"y"}',
        headers => [ 'Content-Type' => 'application/json' ]), 400, 4, 'keys equal ignoring case');
api_error(emu('POST', $BAN, body => '{"target_user_id":"x",}',
        headers => [ 'Content-Type' => 'application/json' ]), 400, 4, 'invalid JSON');
api_error(emu('POST', $BAN, body => '["x"]', headers => [ 'Content-Type' => 'application/json' ]),
    400, 4, 'non-object JSON');
api_error(emu('POST', $BAN, body => "{\"target_user_id\":\"\xff\"}",
        headers => [ 'Content-Type' => 'application/json' ]), 400, 4, 'invalid UTF-8');
is($t->last_upstream->{body}, "{\"target_user_id\":\"\xff\"}", 'invalid UTF-8 body recorded byte for byte');
api_error(emu('POST', $BAN, body => '{"target_user_id":"x"}', headers => [ 'Content-Type' => 'text/plain' ]),
    400, 4, 'Content-Type text/plain');
api_error(emu('POST', $BAN, body => '{"target_user_id":"x"}'), 400, 4, 'no Content-Type');
is(emu('POST', $BAN, body => '{"target_user_id":"x"}',
        headers => [ 'Content-Type' => 'application/json; charset=utf-8' ])->{status}, 201,
    'Content-Type with charset');

{
    my $res = emu('POST', $BAN, body => '{"target_user_id":"x","Reason":"r","extra":{"a":1}}',
        headers => [ 'Content-Type' => 'application/json' ]);
    is($res->{status}, 201, 'unknown and case-folded fields accepted');
    my $r = $t->last_upstream;
    is_deeply($r->{unknown_fields}, ['extra'], 'unknown fields recorded');
    is_deeply($r->{case_folded_fields}, ['Reason'], 'case-folded fields recorded');
}

my $EXPORT = "/api/v2/export/users?api_key=$KEY";
api_error(emu('POST', $EXPORT, json => { user_ids => [ map {"u$_"} 1 .. 26 ] }), 400, 4, 'export 26 ids',
    qr/user_ids must contain at most 25/);
api_error(emu('POST', $EXPORT, json => { user_ids => [] }), 400, 4, 'export 0 ids');
{
    my $res = emu('POST', $EXPORT, json => { user_ids => [ map {"u$_"} 1 .. 25 ] });
    is($res->{status}, 201, 'export 25 ids');
    like($res->{json}{task_id} // '', qr/^[0-9a-f-]{36}$/, 'export: task_id');
}

# --- query parameters -------------------------------------------------------

api_error(emu('POST', "$BAN&foo=1", json => { target_user_id => 'x' }), 400, 4, 'undeclared query parameter',
    qr/unknown query parameter foo/);
my $UNBAN = "/api/v2/moderation/unban?api_key=$KEY";
api_error(emu('POST', $UNBAN, json => {}), 400, 4, 'unban without target_user_id', qr/target_user_id/);
api_error(emu('POST', "$UNBAN&target_user_id=", json => {}), 400, 4, 'unban with empty target_user_id');
api_error(emu('POST', "$UNBAN&target_user_id=a&target_user_id=b", json => {}), 400, 4,
    'unban with target_user_id twice');
is(emu('POST', "$UNBAN&target_user_id=bob", json => { unbanned_by_id => 'mod' })->{status}, 201, 'unban');
is_deeply($t->last_upstream->{query}{target_user_id}, ['bob'], 'unban: query recorded');
{
    my $res = emu('GET', "/api/v2/users/block?api_key=$KEY&user_id=alice");
    is($res->{status}, 200, 'blocked users: 200');
    is_deeply($res->{json}, { blocks => [], duration => '0.42ms' }, 'blocked users: body');
}

# --- async tasks --------------------------------------------------------------

{
    my $res = emu('POST', "/api/v2/users/deactivate?api_key=$KEY", json => { user_ids => [ 'a', 'b' ] });
    is($res->{status}, 201, 'deactivate users: 201');
    my $id = $res->{json}{task_id};
    like($id // '', qr/^[0-9a-f-]{36}$/, 'deactivate users: task_id');
    $res = emu('GET', "/api/v2/tasks/$id?api_key=$KEY");
    is($res->{status}, 200, 'task: 200');
    is($res->{json}{task_id}, $id, 'task: id');
    like($res->{json}{status}, qr/^(?:pending|running)$/, 'task: first poll pending');
    ok($res->{json}{$_}, "task: $_") for qw(created_at updated_at duration);
    $res = emu('GET', "/api/v2/tasks/$id?api_key=$KEY");
    is($res->{json}{status}, 'completed', 'task: then completed');
    ok($res->{json}{result}, 'task: result');
    api_error(emu('GET', "/api/v2/tasks/no-such-task?api_key=$KEY"), 404, 16, 'unknown task');
}
{
    my $res = emu('POST', "/api/v2/users/alice/deactivate?api_key=$KEY", json => { created_by_id => 'mod' });
    is($res->{status}, 201, 'deactivate user');
    is($res->{json}{user}{id}, 'alice', 'deactivate user: user.id');
    ok(exists $res->{json}{user}{$_}, "deactivate user: user.$_")
      for qw(custom language role teams created_at updated_at banned online blocked_user_ids shadow_banned invisible);
    is(emu('POST', "/api/v2/users/alice/reactivate?api_key=$KEY", json => {})->{status}, 201, 'reactivate user');
}

# --- client side and server side ------------------------------------------------

my $CALL = '/api/v2/video/call/default/c1';
{
    my $user = $t->user_token('joe');
    my $res = emu('POST', "$CALL/request_permission?api_key=$KEY", auth => $user,
        json => { permissions => ['screenshare'] });
    is($res->{status}, 201, 'request_permission with a user token');
    is($t->last_upstream->{auth}{kind}, 'user', 'user token recorded');
    is($t->last_upstream->{auth}{payload}{user_id}, 'joe', 'user token payload recorded');
    api_error(emu('POST', "$CALL/request_permission?api_key=$KEY", json => { permissions => ['screenshare'] }),
        404, 16, 'request_permission with the server token', qr/client-side/);
    api_error(emu('POST', "$CALL/request_permission?api_key=$KEY", auth => $user,
            json => { permissions => ['dance'] }), 400, 4, 'request_permission: enum in array items');
    api_error(emu('POST', "$UNBAN&target_user_id=bob", auth => $user, json => {}), 403, 17,
        'server-only path with a user token');
    api_error(emu('POST', "/api/v2/users/deactivate?api_key=$KEY", auth => $user, json => { user_ids => ['a'] }),
        403, 17, 'deactivate users with a user token');
    # client-side schema: server-only fields are unknown there
    $res = emu('POST', "$CALL/mute_users?api_key=$KEY", auth => $user,
        json => { user_ids => ['a'], muted_by_id => 'joe', audio => JSON::PP::true });
    is($res->{status}, 201, 'mute_users with a user token');
    is_deeply($t->last_upstream->{unknown_fields}, ['muted_by_id'], 'muted_by_id unknown client-side');
    $res = emu('POST', "$CALL/mute_users?api_key=$KEY", json => { user_ids => ['a'], muted_by_id => 'joe' });
    is_deeply($t->last_upstream->{unknown_fields}, [], 'muted_by_id known server-side');
}

# --- the other gateway operations --------------------------------------------------

for my $case (
    [ POST => '/api/v2/moderation/mute',    { target_ids => ['a'], user_id => 'm', timeout => 5 } ],
    [ POST => '/api/v2/moderation/unmute',  { target_ids => ['a'], user_id => 'm' } ],
    [ POST => '/api/v2/users/block',        { blocked_user_id => 'b', user_id => 'a' } ],
    [ POST => '/api/v2/users/unblock',      { blocked_user_id => 'b', user_id => 'a' } ],
    [ POST => '/api/v2/users/reactivate',   { user_ids => ['a'], created_by_id => 'm' } ],
    [ POST => "$CALL/block",                { user_id => 'a' } ],
    [ POST => "$CALL/unblock",              { user_id => 'a' } ],
    [ POST => "$CALL/kick",                 { user_id => 'a', kicked_by_id => 'm', block => JSON::PP::true } ],
    [ POST => "$CALL/user_permissions",     { user_id => 'a', grant_permissions => ['send-audio'] } ],
    [ POST => "$CALL/mark_ended",           undef ],
    [ POST => "$CALL/mute_users",           { mute_all_users => JSON::PP::true, muted_by_id => 'm' } ],
) {
    my ($m, $p, $json) = @$case;
    my $res = emu($m, "$p?api_key=$KEY", defined $json ? (json => $json) : ());
    is($res->{status}, 201, "$m $p") or diag($res->{body});
    is($res->{json}{duration}, '0.42ms', "$m $p: duration");
}
{
    my $res = emu('POST', "/api/v2/users/block?api_key=$KEY", json => { blocked_user_id => 'b', user_id => 'a' });
    is($res->{json}{blocked_user_id}, 'b', 'block users: blocked_user_id');
    is($res->{json}{blocked_by_user_id}, 'a', 'block users: blocked_by_user_id');
    ok($res->{json}{created_at}, 'block users: created_at');
}
api_error(emu('POST', "/api/v2/video/call/default/" . ('x' x 65) . "/kick?api_key=$KEY", json => { user_id => 'a' }),
    400, 4, 'path parameter longer than maxLength');
api_error(emu('POST', "$CALL/kick?api_key=$KEY", json => {}), 400, 4, 'kick without user_id',
    qr/KickUserRequest\.user_id is a required field/);

# --- HTTP framing ---------------------------------------------------------------------

{
    my $body = '{"target_user_id":"chunky"}';
    my $chunked = sprintf("%x\r\n%s\r\n%x\r\n%s\r\n0\r\n\r\n",
        10, substr($body, 0, 10), length($body) - 10, substr($body, 10));
    my $res = emu('POST', $BAN, body => $chunked,
        headers => [ 'Content-Type' => 'application/json', 'Transfer-Encoding' => 'chunked' ]);
    is($res->{status}, 201, 'chunked request body');
    is($t->last_upstream->{body}, $body, 'chunked body recorded de-chunked');
    ok($t->last_upstream->{chunked}, 'chunked flag recorded');
}
{
    my $body = '{"target_user_id":"ka"}';
    my $one = "POST $BAN HTTP/1.1\r\nHost: x\r\nstream-auth-type: jwt\r\nAuthorization: $SERVER\r\n"
      . "Content-Type: application/json\r\nContent-Length: " . length($body) . "\r\n\r\n$body";
    my $close = $one =~ s/\r\n\r\n/\r\nConnection: close\r\n\r\n/r;
    my @res = $t->raw_request($one . $one . $close, port => $t->emu_port, all => 1);
    is(scalar @res, 3, 'keep-alive: three responses on one connection');
    is_deeply([ map { $_->{status} } @res ], [ 201, 201, 201 ], 'keep-alive: all 201');
    my @r = ($t->upstream_requests)[ -3 .. -1 ];
    is_deeply([ map { $_->{conn_request} } @r ], [ 1, 2, 3 ], 'keep-alive: requests on one connection');
    is(scalar(keys %{ { map { $_->{conn} => 1 } @r } }), 1, 'keep-alive: same connection id');
    is($res[0]{headers}{connection}[0], 'keep-alive', 'keep-alive answer');
    is($res[2]{headers}{connection}[0], 'close', 'close answer');

    my $res = emu('POST', $BAN, http_version => '1.0', json => { target_user_id => 'old' });
    is($res->{status}, 201, 'HTTP/1.0');
    is($t->last_upstream->{http_version}, '1.0', 'HTTP/1.0 recorded');
}
{
    my $res = $t->raw_request("POST $BAN HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        port => $t->emu_port);
    is($res->{status}, 400, 'Content-Length with Transfer-Encoding: 400');
    like($t->last_upstream->{error}, qr/malformed HTTP request/, 'malformed request recorded');
    $res = $t->raw_request("garbage\r\n\r\n", port => $t->emu_port);
    is($res->{status}, 400, 'garbage request line: 400');
    $res = $t->raw_request("POST $BAN HTTP/1.1\r\nHost: x\r\nContent-Length: 9000000\r\n\r\n",
        port => $t->emu_port);
    api_error($res, 413, 22, 'body over 8 MB');
}

# --- fault injection ------------------------------------------------------------------

{
    $t->emu_control({ delay_ms => 700 });
    my $t0 = time;
    my $res = emu('POST', $BAN, json => { target_user_id => 'slow' });
    my $dt = time - $t0;
    is($res->{status}, 201, 'delay: normal answer');
    ok($dt >= 0.7, "delay: took $dt s");
    is($t->last_upstream->{fault}{delay_ms}, 700, 'delay: fault recorded');

    # a slow answer never blocks other connections
    $t->emu_control({ delay_ms => 1500, path_prefix => '/api/v2/moderation/mute' });
    my $pid = fork // die;
    if (!$pid) {
        emu('POST', "/api/v2/moderation/mute?api_key=$KEY", json => { target_ids => ['a'] });
        POSIX::_exit(0);
    }
    select(undef, undef, undef, 0.2);
    $t0 = time;
    $res = emu('POST', $BAN, json => { target_user_id => 'fast' });
    is($res->{status}, 201, 'concurrent: other path answered');
    ok(time - $t0 < 1, 'concurrent: not blocked by a slow answer');
    waitpid($pid, 0);

    $t->emu_control({ status => 503, body => 'upstream sad', content_type => 'text/plain' });
    $res = emu('POST', $BAN, json => { target_user_id => 'x' });
    is($res->{status}, 503, 'forced status');
    is($res->{body}, 'upstream sad', 'forced body');
    is($res->{headers}{'content-type'}[0], 'text/plain', 'forced content type');
    is($t->last_upstream->{status}, 503, 'forced status recorded');
    is($t->last_upstream->{validated_status}, 201, 'normal answer recorded as validated_status');

    $t->emu_control({ status => 429, body => { code => 9, message => 'Too many requests', StatusCode => 429 },
        headers => { 'Retry-After' => 3 } });
    $res = emu('POST', $BAN, json => { target_user_id => 'x' });
    is($res->{status}, 429, 'forced 429');
    is($res->{json}{code}, 9, 'forced JSON body');
    is($res->{headers}{'retry-after'}[0], 3, 'forced extra header');

    $t->emu_control({ close => JSON::PP::true });
    my $n = $t->upstream_count;
    $res = emu('POST', $BAN, json => { target_user_id => 'x' }, timeout => 5);
    ok(!defined $res->{status}, 'close: no answer');
    is($t->upstream_count, $n + 1, 'close: still recorded');

    $t->emu_control({ reset_mid_response => JSON::PP::true });
    $res = emu('POST', $BAN, json => { target_user_id => 'x' }, timeout => 5);
    is($res->{status}, 201, 'reset mid response: headers came');
    ok($res->{headers}{'x-test-truncated'}, 'reset mid response: body truncated');

    $t->emu_control(undef);
    is(emu('POST', $BAN, json => { target_user_id => 'x' })->{status}, 201, 'control removed');
}

# --- harness helpers ---------------------------------------------------------------------

{
    my $jwt = $t->server_token;
    is_deeply($t->verify_server_token($jwt), { server => JSON::PP::true }, 'verify_server_token');
    is($t->verify_server_token($t->server_token(secret => 'x')), undef, 'verify_server_token: other secret');
    my $u = $t->user_token('bob', exp => undef, role => 'admin');
    my ($h, $p) = split /\./, $u;
    my $pl = JSON::PP->new->decode(StreamMod::Test::b64url_decode($p));
    ok(!exists $pl->{exp}, 'user_token: exp omitted');
    is($pl->{role}, 'admin', 'user_token: claim');
    ok($pl->{iat} <= time, 'user_token: iat');
    is(mint_jwt('k', { alg => 'HS256' }, { a => 1 }), mint_jwt('k', '{"alg":"HS256"}', '{"a":1}'),
        'mint_jwt: raw and encoded');
    is(b64url("\xfb\xff"), '-_8', 'b64url');
    $t->reset_upstream;
    is($t->upstream_count, 0, 'reset_upstream');
}

$t->stop;
done_testing;
