#!/usr/bin/perl

# Every action of SPEC section 4: the gateway request a frontend sends, and
# the exact upstream request the emulator records (method, path, query, a
# server token that verifies, headers, and the stamped body byte for byte).

use strict;
use warnings;

use Test::More;
use JSON::PP;

use lib 't/lib';
use StreamMod::Test;

my $t = StreamMod::Test->new;

$t->write_policy({
    rules => [
        { effect => 'allow', actions => ['*'], users => ['mod-1'] },
    ],
});

$t->write_config($t->default_config)->run;

my $token = $t->user_token('mod-1');

# name, method, gateway path, body sent, expected upstream method, path,
# query (after api_key), body, status
my @cases = (
    [ 'ban', POST => '/moderation/ban',
      '{"target_user_id":"u-2","timeout":30,"reason":"spam"}',
      POST => '/api/v2/moderation/ban', '',
      '{"banned_by_id":"mod-1","target_user_id":"u-2","timeout":30,'
      . '"reason":"spam"}', 201 ],

    [ 'ban, actor given and equal', POST => '/moderation/ban',
      '{ "banned_by_id" : "mod-1", "target_user_id":"u-2" }',
      POST => '/api/v2/moderation/ban', '',
      '{ "banned_by_id" : "mod-1", "target_user_id":"u-2" }', 201 ],

    [ 'unban (POST, target in query)', POST =>
      '/moderation/unban?target_user_id=u-2', undef,
      POST => '/api/v2/moderation/unban', '&target_user_id=u-2',
      '{"unbanned_by_id":"mod-1"}', 201 ],

    [ 'unban (DELETE /moderation/ban, target in query)', DELETE =>
      '/moderation/ban?target_user_id=u-2', undef,
      POST => '/api/v2/moderation/unban', '&target_user_id=u-2',
      '{"unbanned_by_id":"mod-1"}', 201 ],

    [ 'unban (DELETE /moderation/ban, target in body)', DELETE =>
      '/moderation/ban', '{"target_user_id":"u-2"}',
      POST => '/api/v2/moderation/unban', '&target_user_id=u-2',
      '{"unbanned_by_id":"mod-1","target_user_id":"u-2"}', 201 ],

    [ 'unban with channel_cid', POST =>
      '/moderation/unban?target_user_id=u-2&channel_cid=messaging:general',
      '{}', POST => '/api/v2/moderation/unban',
      '&target_user_id=u-2&channel_cid=messaging:general',
      '{"unbanned_by_id":"mod-1"}', 201 ],

    [ 'mute', POST => '/moderation/mute', '{"target_ids":["u-2","u-3"]}',
      POST => '/api/v2/moderation/mute', '',
      '{"user_id":"mod-1","target_ids":["u-2","u-3"]}', 201 ],

    [ 'unmute', POST => '/moderation/unmute', '{"target_ids":["u-2"]}',
      POST => '/api/v2/moderation/unmute', '',
      '{"user_id":"mod-1","target_ids":["u-2"]}', 201 ],

    [ 'block_user', POST => '/moderation/block', '{"blocked_user_id":"u-2"}',
      POST => '/api/v2/users/block', '',
      '{"user_id":"mod-1","blocked_user_id":"u-2"}', 201 ],

    [ 'unblock_user', POST => '/moderation/unblock',
      '{"blocked_user_id":"u-2"}', POST => '/api/v2/users/unblock', '',
      '{"user_id":"mod-1","blocked_user_id":"u-2"}', 201 ],

    [ 'blocked_users', GET => '/moderation/blocked', undef,
      GET => '/api/v2/users/block', '&user_id=mod-1', '', 200 ],

    [ 'blocked_users, user_id given and equal', GET =>
      '/moderation/blocked?user_id=mod-1', undef,
      GET => '/api/v2/users/block', '&user_id=mod-1', '', 200 ],

    [ 'deactivate_user', POST => '/moderation/users/u-2/deactivate',
      '{"mark_messages_deleted":true}',
      POST => '/api/v2/users/u-2/deactivate', '',
      '{"created_by_id":"mod-1","mark_messages_deleted":true}', 201 ],

    [ 'reactivate_user', POST => '/moderation/users/u-2/reactivate', undef,
      POST => '/api/v2/users/u-2/reactivate', '',
      '{"created_by_id":"mod-1"}', 201 ],

    [ 'deactivate_users', POST => '/moderation/users/deactivate',
      '{"user_ids":["u-2","u-3"]}', POST => '/api/v2/users/deactivate', '',
      '{"created_by_id":"mod-1","user_ids":["u-2","u-3"]}', 201 ],

    [ 'reactivate_users', POST => '/moderation/users/reactivate',
      '{"user_ids":["u-2"],"restore_messages":true}',
      POST => '/api/v2/users/reactivate', '',
      '{"created_by_id":"mod-1","user_ids":["u-2"],"restore_messages":true}',
      201 ],

    [ 'export_users', POST => '/moderation/users/export',
      '{"user_ids":["u-2"]}', POST => '/api/v2/export/users', '',
      '{"user_ids":["u-2"]}', 201 ],

    [ 'mute_users', POST => '/calls/default/c-1/mute_users',
      '{"user_ids":["u-2"],"audio":true}',
      POST => '/api/v2/video/call/default/c-1/mute_users', '',
      '{"muted_by_id":"mod-1","user_ids":["u-2"],"audio":true}', 201 ],

    [ 'block_call_user', POST => '/calls/default/c-1/block',
      '{"user_id":"u-2"}', POST => '/api/v2/video/call/default/c-1/block', '',
      '{"user_id":"u-2"}', 201 ],

    [ 'unblock_call_user', POST => '/calls/livestream/c_2/unblock',
      '{"user_id":"u-2"}',
      POST => '/api/v2/video/call/livestream/c_2/unblock', '',
      '{"user_id":"u-2"}', 201 ],

    [ 'kick_user', POST => '/calls/default/c-1/kick',
      '{"user_id":"u-2","block":true}',
      POST => '/api/v2/video/call/default/c-1/kick', '',
      '{"kicked_by_id":"mod-1","user_id":"u-2","block":true}', 201 ],

    [ 'update_user_permissions', POST => '/calls/default/c-1/user_permissions',
      '{"user_id":"u-2","revoke_permissions":["send-audio"]}',
      POST => '/api/v2/video/call/default/c-1/user_permissions', '',
      '{"user_id":"u-2","revoke_permissions":["send-audio"]}', 201 ],

    [ 'end_call', POST => '/calls/default/c-1/mark_ended', undef,
      POST => '/api/v2/video/call/default/c-1/mark_ended', '', '{}', 201 ],
);

for my $c (@cases) {
    my ($name, $m, $path, $body, $um, $upath, $uquery, $ubody, $status) = @$c;

    $t->reset_upstream;

    my $r = $t->request($m, $path, token => $token,
        defined $body
            ? (body => $body, headers => ['Content-Type' => 'application/json'])
            : ());

    is($r->{status}, $status, "$name: $m $path answers $status")
        or diag($r->{body});

    my @up = $t->upstream_requests;
    is(scalar @up, 1, "$name: one upstream request");
    my $u = $up[-1] or next;

    is($u->{method}, $um, "$name: upstream method");
    is($u->{path}, $upath, "$name: upstream path");
    is($u->{raw_query}, "api_key=" . $t->api_key . $uquery,
        "$name: upstream query");
    is($u->{status}, $status, "$name: the emulator accepted it")
        or diag($u->{error});

    my $auth = $u->{headers}{authorization};
    is(scalar @{ $auth || [] }, 1, "$name: one Authorization header");
    is_deeply($t->verify_server_token($auth->[0]), { server => JSON::PP::true },
        "$name: Authorization is the server token");
    is_deeply($u->{headers}{'stream-auth-type'}, ['jwt'],
        "$name: stream-auth-type: jwt");
    is_deeply($u->{headers}{'x-stream-client'}, ['ngx_stream_mod/0.1.0'],
        "$name: X-Stream-Client");

    is($u->{body}, $ubody, "$name: upstream body");

    if (length $ubody) {
        is_deeply($u->{headers}{'content-length'}, [length $ubody],
            "$name: Content-Length matches the stamped body");
    }
}

# get_task: the task id comes from an async bulk action

$t->reset_upstream;

my $r = $t->request(POST => '/moderation/users/deactivate', token => $token,
    json => { user_ids => ['u-9'] });
is($r->{status}, 201, 'deactivate_users for a task');
my $task = $r->{json}{task_id};
ok(defined $task && $task =~ /\A[A-Za-z0-9_-]+\z/, 'the answer has a task_id');

$r = $t->request(GET => "/moderation/tasks/$task", token => $token);
is($r->{status}, 200, 'get_task: GET /moderation/tasks/{id} answers 200');
is($r->{json}{task_id}, $task, 'get_task: the task object passes through');

my $u = $t->last_upstream;
is($u->{method}, 'GET', 'get_task: upstream method');
is($u->{path}, "/api/v2/tasks/$task", 'get_task: upstream path');
is($u->{raw_query}, 'api_key=' . $t->api_key, 'get_task: upstream query');
is($u->{body}, '', 'get_task: no body');

# request_permission runs as the caller: the user's own token goes upstream

$t->reset_upstream;

$r = $t->request(POST => '/calls/default/c-1/request_permission',
    token => $token, body => '{"permissions":["send-audio"]}',
    headers => ['Content-Type' => 'application/json']);
is($r->{status}, 201, 'request_permission answers 201') or diag($r->{body});

$u = $t->last_upstream;
is($u->{path}, '/api/v2/video/call/default/c-1/request_permission',
    'request_permission: upstream path');
is_deeply($u->{headers}{authorization}, [$token],
    'request_permission: the caller\'s own token goes upstream, raw');
is($u->{auth}{kind}, 'user', 'request_permission: Stream sees a user token');
is($u->{body}, '{"permissions":["send-audio"]}',
    'request_permission: body unchanged');

# Stream's answer passes through unchanged, rate-limit headers included

$r = $t->request(POST => '/moderation/ban', token => $token,
    json => { target_user_id => 'u-2' });
ok(exists $r->{headers}{'x-ratelimit-limit'},
    'Stream\'s X-RateLimit-Limit passes through');
ok(defined $r->{json}{duration}, 'Stream\'s body passes through');

$t->stop;

done_testing;
