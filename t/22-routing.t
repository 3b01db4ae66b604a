#!/usr/bin/perl

# Routing (SPEC section 4): the gateway routes on the path as the client
# sent it ($request_uri). Dot segments, encoded or escaped characters,
# doubled slashes and bad path parameters are 400 (code 4); unknown paths
# 404 (code 16); a known path with another method 405 (code 4) with Allow.
# Query handling (SPEC section 7): api_key exactly once, only the
# parameters the upstream operation defines, the unban target and the
# blocked_users actor checked; no body on GET actions.

use strict;
use warnings;

use Test::More;
use JSON::PP;

use lib 't/lib';
use StreamMod::Test qw(mint_jwt b64url api_error);

my $t = StreamMod::Test->new;

$t->write_policy({ rules => [ { effect => 'allow', actions => ['*'], users => ['mod-1'] } ] });
$t->write_config($t->default_config)->run;

my $token = $t->user_token('mod-1');
my $KEY = $t->api_key;

# send; default body a valid ban/kick body (both have target fields)
sub send_req {
    my ($method, $path, %o) = @_;
    my @h = @{ $o{headers} || [] };
    push @h, Authorization => $token unless $o{no_token};
    my $body = exists $o{body} ? $o{body}
             : $method eq 'GET' || $method eq 'HEAD' ? undef
             : '{"target_user_id":"u-2","user_id":"u-2"}';
    push @h, 'Content-Type' => 'application/json' if defined $body && !$o{no_ct};
    return $t->request($method, $path, headers => \@h, defined $body ? (body => $body) : ());
}

# a gateway refusal: exact status, APIError JSON, headers; nothing upstream
sub refused {
    my ($name, $method, $path, $status, $code, $msg, %o) = @_;
    $t->reset_upstream;
    my $r = send_req($method, $path, %o);
    is($r->{status}, $status, "$name: $method $path answers $status");
    if ($method eq 'HEAD') {
        is($r->{body}, '', "$name: no body on HEAD");
    } else {
        my $m = ref $msg ? $msg : qr/\A\Q$msg\E\z/;
        is_deeply([ sort keys %{ $r->{json} || {} } ],
            [qw(StatusCode code details duration message more_info)],
            "$name: APIError JSON shape") or diag($r->{body});
        is($r->{json}{code}, $code, "$name: code $code");
        is($r->{json}{StatusCode}, $status, "$name: StatusCode $status");
        like($r->{json}{message} // '', $m, "$name: message");
        is_deeply($r->{json}, api_error($status, $code, $r->{json}{message}),
            "$name: duration, more_info, details as Stream's");
    }
    is_deeply($r->{headers}{'content-type'}, ['application/json'],
        "$name: Content-Type application/json");
    if (exists $o{allow}) {
        is_deeply($r->{headers}{allow}, [ $o{allow} ], "$name: Allow: $o{allow}");
    } else {
        ok(!$r->{headers}{allow}, "$name: no Allow header");
    }
    is($t->upstream_count, 0, "$name: nothing reached the upstream");
    return $r;
}

# forwarded: status from the emulator, the exact upstream request line
sub forwarded {
    my ($name, $method, $path, $upath, $uquery, %o) = @_;
    $t->reset_upstream;
    my $r = send_req($method, $path, %o);
    is($r->{status}, $o{status} // 201, "$name: $method $path answers " . ($o{status} // 201))
        or diag($r->{body});
    my @up = $t->upstream_requests;
    is(scalar @up, 1, "$name: one upstream request");
    my $u = $up[-1] || {};
    is($u->{method}, $o{umethod} // 'POST', "$name: upstream method");
    is($u->{path}, $upath, "$name: upstream path $upath");
    is($u->{raw_query}, $uquery, "$name: upstream query is exactly $uquery");
    is($u->{status}, $o{status} // 201, "$name: the emulator accepted it") or diag($u->{error});
    is($u->{body}, $o{ubody}, "$name: upstream body") if exists $o{ubody};
    return $u;
}

my $DOT = 'dot segments are not allowed in the path';
my $ESC = 'encoded or escaped characters are not allowed in the path';
my $EMPTY = 'empty path segment';
my $PARAM = 'invalid path parameter: expected [A-Za-z0-9@_-]{1,64}';
my $NF = 'no moderation endpoint at this path';

# --------------------------------------------------------------------------
# the path as sent: 400 code 4

refused('dot segment', POST => '/moderation/./ban', 400, 4, $DOT);
refused('dot-dot segment back into the location', POST => '/moderation/../moderation/ban',
    400, 4, $DOT);
refused('dot-dot inside a call path', POST => '/calls/default/../x/kick', 400, 4, $DOT);
refused('trailing dot-dot', POST => '/calls/default/c1/kick/..', 400, 4, $DOT);
refused('trailing dot', POST => '/calls/default/c1/kick/.', 400, 4, $DOT);
refused('encoded slash between prefix and action', POST => '/moderation%2Fban', 400, 4, $ESC);
refused('encoded slash (lower case) in a path parameter', POST => '/calls/default/a%2fb/kick',
    400, 4, $ESC);
refused('encoded slash in a path parameter', POST => '/calls/default/a%2Fb/kick', 400, 4, $ESC);
refused('%41 (an escaped letter) in the action', POST => '/moderation/b%41n', 400, 4, $ESC);
refused('%2D (an escaped "-") in a path parameter', POST => '/moderation/users/u%2D1/deactivate',
    400, 4, $ESC, body => '{}');
refused('escaped first segment', POST => '/%6doderation/ban', 400, 4, $ESC);
refused('backslash in the path', POST => '/moderation/\\ban', 400, 4, $ESC);
refused('"#" in the path', POST => '/moderation/ban#x', 400, 4, $ESC);
refused('double slash at the start', POST => '//moderation/ban', 400, 4, $EMPTY);
refused('double slash in the middle', POST => '/moderation//ban', 400, 4, $EMPTY);
refused('empty path parameter', POST => '/moderation/users//deactivate', 400, 4, $EMPTY,
    body => '{}');

refused('path parameter with "!" (call type def@ult!)', POST => '/calls/def@ult!/c1/kick',
    400, 4, $PARAM);
refused('path parameter with "." (call id c.1)', POST => '/calls/default/c.1/kick', 400, 4, $PARAM);
refused('path parameter of 65 chars', POST => '/calls/default/' . ('c' x 65) . '/kick',
    400, 4, $PARAM);
refused('path parameter with non-ASCII bytes (UTF-8 e-acute)', POST => "/calls/d\xc3\xa9f/c1/kick",
    400, 4, $PARAM);
refused('path parameter with a raw 0xff byte', POST => "/moderation/users/u\xff/deactivate",
    400, 4, $PARAM, body => '{}');
refused('task id with ":"', GET => '/moderation/tasks/a:b', 400, 4, $PARAM);

forwarded('path parameter of exactly 64 chars', POST => '/calls/default/' . ('c' x 64) . '/kick',
    '/api/v2/video/call/default/' . ('c' x 64) . '/kick', "api_key=$KEY",
    body => '{"user_id":"u-2"}', ubody => '{"kicked_by_id":"mod-1","user_id":"u-2"}');
forwarded('path parameters with @ _ -', POST => '/calls/live_stream/a@b-c_1/kick',
    '/api/v2/video/call/live_stream/a@b-c_1/kick', "api_key=$KEY", body => '{"user_id":"u-2"}');

# routing comes before identity (as the code does): no token, a bad path is 400
refused('no token and a dot segment: the path is refused first', POST => '/moderation/./ban',
    400, 4, $DOT, no_token => 1);

# --------------------------------------------------------------------------
# unknown paths: 404 code 16

refused('unknown action', POST => '/moderation/nope', 404, 16, $NF);
refused('known action with an extra segment', POST => '/moderation/ban/extra', 404, 16, $NF);
refused('known action with a trailing slash', POST => '/moderation/ban/', 404, 16, $NF);
refused('the location prefix itself', POST => '/moderation/', 404, 16, $NF);
refused('a call path without the action', POST => '/calls/default/c1', 404, 16, $NF);
refused('action name in another case', POST => '/moderation/Ban', 404, 16, $NF);
refused('8 segments (no route that long)', POST => '/moderation/a/b/c/d/e/f/g', 404, 16, $NF);
refused('9 segments (more than the router keeps): 404 code 16, not 400',
    POST => '/moderation/a/b/c/d/e/f/g/h', 404, 16, $NF);
refused('40 segments: 404 code 16', POST => '/moderation' . ('/a' x 39), 404, 16, $NF);
refused('unknown path with a query', POST => '/moderation/nope?target_user_id=u-2', 404, 16, $NF);
refused('unknown path, no token: 404 before identity', POST => '/moderation/nope', 404, 16, $NF,
    no_token => 1);

# "/moderation" without the slash: NGINX's auto-redirect for the prefix
# location. The SPEC says an unknown path is 404 code 16; a 301 carrying
# an error body that says "bad request" is neither a redirect nor an error.
{
    $t->reset_upstream;
    my $r = send_req(POST => '/moderation');
    is($r->{status}, 404, 'POST /moderation (no trailing slash): 404 like any unknown path')
        or diag("got $r->{status}: $r->{body}");
    is_deeply($r->{json}, api_error(404, 16, $NF),
        'POST /moderation (no trailing slash): APIError code 16');
    is($t->upstream_count, 0, 'POST /moderation (no trailing slash): nothing upstream');
}

# --------------------------------------------------------------------------
# known path, another method: 405 code 4 with Allow

refused('GET on ban', GET => '/moderation/ban', 405, 4, 'method GET is not allowed here',
    allow => 'POST, DELETE');
refused('PUT on kick', PUT => '/calls/default/c1/kick', 405, 4, 'method PUT is not allowed here',
    allow => 'POST');
refused('POST on blocked', POST => '/moderation/blocked', 405, 4,
    'method POST is not allowed here', allow => 'GET');
refused('DELETE on blocked', DELETE => '/moderation/blocked', 405, 4,
    'method DELETE is not allowed here', allow => 'GET');
refused('DELETE on unban (only POST; DELETE is on /moderation/ban)', DELETE => '/moderation/unban',
    405, 4, 'method DELETE is not allowed here', allow => 'POST');
refused('POST on a task (GET only)', POST => '/moderation/tasks/t-1', 405, 4,
    'method POST is not allowed here', allow => 'GET');
refused('PATCH on deactivate', PATCH => '/moderation/users/u-2/deactivate', 405, 4,
    'method PATCH is not allowed here', allow => 'POST');
refused('OPTIONS on ban (no CORS configured)', OPTIONS => '/moderation/ban', 405, 4,
    'method OPTIONS is not allowed here', allow => 'POST, DELETE');
refused('HEAD on ban', HEAD => '/moderation/ban', 405, 4, undef, allow => 'POST, DELETE');
refused('HEAD on blocked (GET only)', HEAD => '/moderation/blocked', 405, 4, undef, allow => 'GET');
refused('PUT on kick with a bad parameter: the method is reported', PUT => '/calls/d!/c1/kick',
    405, 4, 'method PUT is not allowed here', allow => 'POST');
refused('GET on ban without a token: 405 before identity', GET => '/moderation/ban', 405, 4,
    'method GET is not allowed here', allow => 'POST, DELETE', no_token => 1);

forwarded('GET /moderation/blocked', GET => '/moderation/blocked',
    '/api/v2/users/block', "api_key=$KEY&user_id=mod-1", umethod => 'GET', status => 200,
    ubody => '');
forwarded('DELETE /moderation/ban is unban', DELETE => '/moderation/ban?target_user_id=u-2',
    '/api/v2/moderation/unban', "api_key=$KEY&target_user_id=u-2", body => undef,
    ubody => '{"unbanned_by_id":"mod-1"}');

# --------------------------------------------------------------------------
# query: api_key exactly once, only what the operation defines

forwarded('ban with ?api_key=evil: the client api_key is dropped', POST => '/moderation/ban?api_key=evil',
    '/api/v2/moderation/ban', "api_key=$KEY", body => '{"target_user_id":"u-2"}',
    ubody => '{"banned_by_id":"mod-1","target_user_id":"u-2"}');
forwarded('ban with ?target_user_id=x&api_key=evil&user_id=y: query is exactly api_key=KEY',
    POST => '/moderation/ban?target_user_id=x&api_key=evil&user_id=y',
    '/api/v2/moderation/ban', "api_key=$KEY", body => '{"target_user_id":"u-2"}',
    ubody => '{"banned_by_id":"mod-1","target_user_id":"u-2"}');
forwarded('unban with api_key twice around the target: only the configured key',
    POST => '/moderation/unban?api_key=evil&target_user_id=u-2&api_key=evil2',
    '/api/v2/moderation/unban', "api_key=$KEY&target_user_id=u-2", body => undef);
forwarded('unban with an unknown parameter: dropped, channel_cid kept',
    POST => '/moderation/unban?foo=bar&target_user_id=u-2&channel_cid=messaging:general&x',
    '/api/v2/moderation/unban', "api_key=$KEY&target_user_id=u-2&channel_cid=messaging:general",
    body => undef);
forwarded('unban with Target_User_Id=u-3 (other case): dropped, target_user_id=u-2 acts',
    POST => '/moderation/unban?Target_User_Id=u-3&target_user_id=u-2',
    '/api/v2/moderation/unban', "api_key=$KEY&target_user_id=u-2", body => undef);
forwarded('blocked_users with ?api_key=evil', GET => '/moderation/blocked?api_key=evil',
    '/api/v2/users/block', "api_key=$KEY&user_id=mod-1", umethod => 'GET', status => 200);
forwarded('blocked_users with ?user_id=mod-1 (the caller)', GET => '/moderation/blocked?user_id=mod-1',
    '/api/v2/users/block', "api_key=$KEY&user_id=mod-1", umethod => 'GET', status => 200);
{
    my $r = send_req(POST => '/moderation/users/deactivate', body => '{"user_ids":["u-9"]}');
    my $task = $r->{json}{task_id} // 'no-task';
    like($task, qr/\A[A-Za-z0-9_-]+\z/, 'a task id from deactivate_users');
    forwarded('get_task with ?api_key=evil&x=1: query is exactly api_key=KEY',
        GET => "/moderation/tasks/$task?api_key=evil&x=1", "/api/v2/tasks/$task", "api_key=$KEY",
        umethod => 'GET', status => 200, ubody => '');
}

refused('unban with target_user_id twice', POST => '/moderation/unban?target_user_id=u-2&target_user_id=u-3',
    400, 4, 'query parameter "target_user_id" given twice', body => undef);
refused('unban with the same target_user_id twice',
    POST => '/moderation/unban?target_user_id=u-2&target_user_id=u-2',
    400, 4, 'query parameter "target_user_id" given twice', body => undef);
refused('unban with channel_cid twice',
    POST => '/moderation/unban?target_user_id=u-2&channel_cid=a:b&channel_cid=c:d',
    400, 4, 'query parameter "channel_cid" given twice', body => undef);
refused('unban: target u-2 in the query, u-3 in the body (POST /moderation/unban)',
    POST => '/moderation/unban?target_user_id=u-2', 400, 4,
    'target_user_id differs between query and body', body => '{"target_user_id":"u-3"}');
refused('unban: target u-2 in the query, u-3 in the body (DELETE /moderation/ban)',
    DELETE => '/moderation/ban?target_user_id=u-2', 400, 4,
    'target_user_id differs between query and body', body => '{"target_user_id":"u-3"}');
refused('unban with target_user_id=bad!id', POST => '/moderation/unban?target_user_id=bad!id',
    400, 4, 'target_user_id is not a valid user id', body => undef);
refused('unban with target_user_id=u%2D2 (escaped)', POST => '/moderation/unban?target_user_id=u%2D2',
    400, 4, 'invalid value for query parameter "target_user_id"', body => undef);
refused('unban with target_user_id= (empty)', POST => '/moderation/unban?target_user_id=',
    400, 4, 'invalid value for query parameter "target_user_id"', body => undef);
refused('unban with target_user_id=u+2', POST => '/moderation/unban?target_user_id=u+2',
    400, 4, 'invalid value for query parameter "target_user_id"', body => undef);
refused('unban with no target anywhere', POST => '/moderation/unban?foo=bar', 400, 4,
    'target_user_id is a required field', body => undef);
refused('blocked_users with ?user_id=someone-else', GET => '/moderation/blocked?user_id=someone-else',
    403, 17, 'acting user mismatch: user_id must be the caller');
refused('blocked_users with user_id twice', GET => '/moderation/blocked?user_id=mod-1&user_id=u-2',
    400, 4, 'query parameter "user_id" given twice');

# --------------------------------------------------------------------------
# GET actions take no body

refused('blocked_users with Content-Length: 5', GET => '/moderation/blocked', 400, 4,
    'blocked_users takes no request body', body => 'hello', no_ct => 1);
refused('blocked_users with a JSON body', GET => '/moderation/blocked', 400, 4,
    'blocked_users takes no request body', body => '{}');
refused('get_task with a body', GET => '/moderation/tasks/t-1', 400, 4,
    'get_task takes no request body', body => '{}');
{
    $t->reset_upstream;
    my $r = $t->raw_request("GET /moderation/blocked HTTP/1.1\r\nHost: localhost\r\n"
        . "Authorization: $token\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
        . "5\r\nhello\r\n0\r\n\r\n");
    is($r->{status}, 400, 'blocked_users with a chunked body: 400');
    is_deeply($r->{json}, api_error(400, 4, 'blocked_users takes no request body'),
        'blocked_users with a chunked body: APIError code 4');
    is($t->upstream_count, 0, 'blocked_users with a chunked body: nothing upstream');
}
forwarded('blocked_users with Content-Length: 0 is no body', GET => '/moderation/blocked',
    '/api/v2/users/block', "api_key=$KEY&user_id=mod-1", umethod => 'GET', status => 200,
    headers => ['Content-Length' => 0], ubody => '');

$t->stop;

done_testing;
