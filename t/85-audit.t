#!/usr/bin/perl

# The audit trail (SPEC section 8 variables, docs/audit.md): a log_format of
# $stream_mod_user, _action, _target, _call, _decision, _reason and _rule
# written with access_log in the stream_mod locations.  A mixed workload
# (allowed, denied by a rule, by protected_users, by default, refused at
# identity, at the body, at routing, by the rate limit, answered 5xx by
# Stream) gives one audit line per request, in order, each field exact.
# Then the secret scan: the API secret, the server token and every user
# token used appear in no log (error log at info included), no response
# header and no response body; $http_authorization is logged empty.

use strict;
use warnings;

use Test::More;
use JSON::PP;

use lib 't/lib';
use StreamMod::Test;

# the module's refusal lines are logged at info: scan them too
$ENV{STREAM_MOD_ERROR_LOG_LEVEL} = 'info';

my $t = StreamMod::Test->new;

$t->write_policy({
    roles => { bob => ['moderator'], alice => ['admin'] },
    protected_users => ['alice'],
    rules => [
        { effect => 'deny', actions => ['ban'], roles => ['moderator'],
          when => { ip_ban => JSON::PP::true } },
        { effect => 'allow', actions => [qw(ban unban mute)], roles => ['moderator'],
          limits => { max_timeout => 60 } },
        { effect => 'allow', actions => [qw(mute_users kick_user)], roles => ['moderator'],
          call_types => [qw(default audio_room)] },
        { effect => 'allow', actions => ['*'], roles => ['admin'] },
    ],
});

$t->write_config($t->default_config(
    http => <<'HTTP',
    stream_mod_limit_zone zone=mods:1m rate=6r/m;

    log_format audit escape=json '{"user":"$stream_mod_user","action":"$stream_mod_action","target":"$stream_mod_target","call":"$stream_mod_call","decision":"$stream_mod_decision","reason":"$stream_mod_reason","rule":"$stream_mod_rule","status":$status}';
    log_format authlog escape=json '{"authorization":"$http_authorization","uri":"$request_uri"}';
HTTP
    location => <<'LOC',
            stream_mod_limit zone=mods burst=1 per=action;
            access_log %%DIR%%/audit.log audit;
            access_log %%DIR%%/auth.log authlog;
            access_log %%DIR%%/access.log combined;
LOC
))->run;

sub slurp {
    my ($path) = @_;
    open my $fh, '<:raw', $path or return '';
    local $/;
    return <$fh> // '';
}

# A request is logged right after its response is sent: wait for the line
sub wait_lines {
    my ($file, $n) = @_;
    my @lines;
    for (1 .. 100) {
        # complete lines only: a line being written may be read half-way
        (my $text = slurp($t->dir . "/$file")) =~ s/[^\n]*\z//;
        @lines = grep { length } split /\n/, $text;
        last if @lines >= $n;
        select undef, undef, undef, 0.05;
    }
    return @lines;
}

my $bob    = $t->user_token('bob');
my $alice  = $t->user_token('alice');
my $forged = $t->token({ user_id => 'bob', iat => time, exp => time + 3600 },
    secret => 'forged-secret');

my @responses;    # every response received, raw (headers and body)

sub send_req {
    my ($method, $path, %o) = @_;
    my $r = $t->request($method, $path, %o);
    push @responses, $r->{raw} // '';
    return $r;
}

sub json_post {
    my ($path, $token, $json) = @_;
    return send_req(POST => $path, token => $token, json => $json);
}

# --------------------------------------------------------------------------
# the workload: request, expected status, expected audit fields

my @expect;

sub expect {
    my ($r, $name, %f) = @_;
    my %line = (user => '', action => '', target => '', call => '', decision => '',
        reason => '', rule => '', %f);
    is($r->{status}, $line{status}, "$name: $line{status}") or diag($r->{body});
    push @expect, [ $name, \%line ];
}

$t->reset_upstream;

expect(json_post('/moderation/ban', $bob, { target_user_id => 'carol', timeout => 30 }),
    'ban of carol by bob',
    user => 'bob', action => 'ban', target => 'carol', decision => 'allow',
    reason => 'allowed', rule => '2', status => 201);

expect(json_post('/moderation/ban', $bob, { target_user_id => 'dave', timeout => 10 }),
    'ban of dave by bob',
    user => 'bob', action => 'ban', target => 'dave', decision => 'allow',
    reason => 'allowed', rule => '2', status => 201);

expect(json_post('/moderation/mute', $bob, { target_ids => [qw(u1 u2 u3)], timeout => 5 }),
    'mute of u1, u2, u3 by bob',
    user => 'bob', action => 'mute', target => 'u1,u2,u3', decision => 'allow',
    reason => 'allowed', rule => '2', status => 201);

expect(json_post('/calls/default/c-1/kick', $bob, { user_id => 'eve' }),
    'kick of eve from default:c-1 by bob',
    user => 'bob', action => 'kick_user', target => 'eve', call => 'default:c-1',
    decision => 'allow', reason => 'allowed', rule => '3', status => 201);

expect(json_post('/calls/audio_room/town-hall/mute_users', $bob,
        { user_ids => [qw(x1 x2)], audio => JSON::PP::true }),
    'mute_users x1, x2 in audio_room:town-hall by bob',
    user => 'bob', action => 'mute_users', target => 'x1,x2',
    call => 'audio_room:town-hall', decision => 'allow', reason => 'allowed',
    rule => '3', status => 201);

expect(json_post('/moderation/users/zed/deactivate', $alice, {}),
    'deactivate_user zed by alice',
    user => 'alice', action => 'deactivate_user', target => 'zed', decision => 'allow',
    reason => 'allowed', rule => '4', status => 201);

expect(json_post('/calls/default/c-1/request_permission', $alice,
        { permissions => ['send-audio'] }),
    'request_permission by alice (her token goes upstream)',
    user => 'alice', action => 'request_permission', call => 'default:c-1',
    decision => 'allow', reason => 'allowed', rule => '4', status => 201);

is($t->upstream_count, 7, 'the seven allowed requests reached the upstream');
$t->reset_upstream;

expect(json_post('/moderation/ban', $bob,
        { target_user_id => 'frank', timeout => 5, ip_ban => JSON::PP::true }),
    'ban of frank with ip_ban by bob',
    user => 'bob', action => 'ban', target => 'frank', decision => 'deny',
    reason => 'denied by rule 1', rule => '1', status => 403);

expect(json_post('/moderation/ban', $bob, { target_user_id => 'frank', timeout => 120 }),
    'ban of frank for 120 minutes by bob',
    user => 'bob', action => 'ban', target => 'frank', decision => 'deny',
    reason => 'denied by rule 2: timeout exceeds max_timeout 60', rule => '2',
    status => 403);

expect(json_post('/moderation/ban', $bob, { target_user_id => 'alice', timeout => 5 }),
    'ban of protected alice by bob',
    user => 'bob', action => 'ban', target => 'alice', decision => 'deny',
    reason => 'denied: alice is a protected user (protected_users)',
    rule => 'protected_users', status => 403);

expect(json_post('/calls/default/c-1/mark_ended', $bob, {}),
    'end_call default:c-1 by bob',
    user => 'bob', action => 'end_call', call => 'default:c-1', decision => 'deny',
    reason => 'denied: no rule allows end_call (default)', rule => 'default',
    status => 403);

expect(json_post('/moderation/ban', $forged, { target_user_id => 'frank', timeout => 5 }),
    'ban with a forged token for bob',
    action => 'ban', decision => 'reject', reason => 'token signature is invalid',
    status => 401);

expect(send_req(POST => '/moderation/ban', json => { target_user_id => 'frank' }),
    'ban without a token',
    action => 'ban', decision => 'reject', reason => 'missing user token', status => 401);

expect(send_req(POST => '/moderation/ban', token => $bob,
        headers => [ 'Content-Type' => 'application/json' ],
        body => '{"target_user_id":"frank",'),
    'ban by bob with a truncated JSON body',
    user => 'bob', action => 'ban', decision => 'reject',
    reason => 'invalid JSON body at line 1, column 26', status => 400);

expect(json_post('/moderation/nope', $bob, {}),
    'POST /moderation/nope by bob',
    decision => 'reject', reason => 'no moderation endpoint at this path', status => 404);

expect(json_post('/moderation/ban', $bob, { target_user_id => 'greg', timeout => 30 }),
    'third ban by bob (burst=1)',
    user => 'bob', action => 'ban', target => 'greg', decision => 'limit',
    reason => 'rate limit exceeded (zone mods)', rule => '2', status => 429);

is($t->upstream_count, 0, 'none of the refused requests reached the upstream');

# Stream fails: the gate's decision stays allow
$t->emu_control({ status => 500, body => { code => -1, message => 'emulated', StatusCode => 500 } });
expect(json_post('/moderation/users/zed/reactivate', $alice, {}),
    'reactivate_user zed by alice, Stream answers 500',
    user => 'alice', action => 'reactivate_user', target => 'zed', decision => 'allow',
    reason => 'allowed', rule => '4', status => 500);
$t->emu_control(undef);

# --------------------------------------------------------------------------
# the audit log: one line per request, in order, every field exact

my @lines = wait_lines('audit.log', scalar @expect);
is(scalar @lines, scalar @expect, 'audit.log: one line per request');

for my $i (0 .. $#expect) {
    my ($name, $want) = @{ $expect[$i] };
    my $got = eval { JSON::PP->new->utf8->decode($lines[$i] // '') };
    is_deeply($got, $want, "audit line " . ($i + 1) . ": $name")
        or diag($lines[$i]);
}

# --------------------------------------------------------------------------
# secret scan

my @auth = wait_lines('auth.log', scalar @expect);
is(scalar @auth, scalar @expect, 'auth.log: one line per request');
is(scalar(grep { !/\A\{"authorization":"","uri":"[^"]*"\}\z/ } @auth), 0,
    '$http_authorization is logged empty for every request')
    or diag(join "\n", @auth);

# the server token exactly as the module sends it
$t->reset_upstream;
my $r = json_post('/moderation/unban', $alice, { target_user_id => 'zed' });
is($r->{status}, 201, 'an unban by alice to see the server token');
my $server_token = ($t->last_upstream->{headers}{authorization} // [])->[0] // '';
is($server_token, $t->server_token,
    'the module\'s server token is the HS256 JWT of {"server":true}');

wait_lines($_, @expect + 1) for qw(audit.log auth.log access.log);

my %secrets = (
    'API secret'               => $t->api_secret,
    'server token'             => $server_token,
    'server token signature'   => (split /\./, $server_token)[2],
    'bob\'s token'             => $bob,
    'bob\'s token signature'   => (split /\./, $bob)[2],
    'alice\'s token'           => $alice,
    'alice\'s token signature' => (split /\./, $alice)[2],
    'the forged token'         => $forged,
    'the forged token signature' => (split /\./, $forged)[2],
);

my %places = (
    'error.log'  => $t->error_log,
    'access.log' => slurp($t->dir . '/access.log'),
    'audit.log'  => slurp($t->dir . '/audit.log'),
    'auth.log'   => slurp($t->dir . '/auth.log'),
    'responses'  => join("\n", @responses),
);

# the scan would see them: the logs are not empty, and info lines are there
like($places{'error.log'}, qr/\[info\].*stream_mod: 401 token signature is invalid/,
    'the error log holds the module\'s info-level refusal lines');
like($places{'access.log'}, qr{"POST /moderation/ban HTTP/1\.1" 201}, 'access.log is written');

for my $what (sort keys %secrets) {
    my $needle = $secrets{$what};
    ok(length $needle > 10, "$what is known");
    for my $where (sort keys %places) {
        is(index($places{$where}, $needle), -1, "$what does not appear in $where");
    }
}

$t->stop;

done_testing;
