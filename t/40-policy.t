#!/usr/bin/perl

# The policy file (SPEC section 5, docs/policy.md): for each part of the
# language a request it allows and one it denies: the roles map, role_claim
# (string and array), users and "*", actions and "*", rule order,
# call_types, when, each limit (max_timeout, allow_ip_ban, allow_mute_all,
# max_targets), protected_users, the token's call_cids, the default deny,
# a policy without rules and no policy at all; then the SPEC's example
# policy behaving as its comments say. Each policy is served by its own
# server{} (selected by Host), all in one NGINX. A denial is checked for the
# exact 403 APIError (code 17, message naming the reason and the rule) and
# for nothing reaching the emulator; an allowed request for what reached
# it. $stream_mod_decision, $stream_mod_rule and $stream_mod_reason are
# checked for every request through an access_log with a custom format.

use strict;
use warnings;

use Test::More;
use JSON::PP;
use Time::HiRes qw(time sleep);

use lib 't/lib';
use StreamMod::Test qw(mint_jwt b64url api_error_body);

my $t = StreamMod::Test->new;

my $SPEC_EXAMPLE = <<'JSON';
{
  "roles": { "alice": ["admin"], "bob": ["moderator"] },
  "role_claim": "role",
  "protected_users": ["alice"],
  "rules": [
    { "effect": "deny",  "actions": ["ban"], "roles": ["moderator"], "when": { "ip_ban": true } },
    { "effect": "allow", "actions": ["ban", "unban"], "roles": ["moderator"], "limits": { "max_timeout": 60 } },
    { "effect": "allow", "actions": ["mute_users", "kick_user"], "roles": ["moderator"], "call_types": ["default", "audio_room"] },
    { "effect": "allow", "actions": ["*"], "roles": ["admin"] },
    { "effect": "allow", "actions": ["block_user", "unblock_user", "blocked_users", "request_permission"], "users": ["*"] }
  ]
}
JSON

my %POLICY = (
    example => $SPEC_EXAMPLE,

    roles => {
        roles => { bob => ['moderator'], carol => ['support', 'host'] },
        rules => [
            { effect => 'allow', actions => ['ban'], roles => ['moderator'] },
            { effect => 'allow', actions => ['kick_user'], roles => ['host'] },
            { effect => 'allow', actions => ['mute'], roles => ['*'] },
        ],
    },

    claim => {
        role_claim => 'role',
        roles => { bob => ['support'] },
        rules => [
            { effect => 'allow', actions => ['ban'], roles => ['moderator'] },
            { effect => 'allow', actions => ['mute'], roles => ['support'] },
        ],
    },

    users => {
        rules => [
            { effect => 'allow', actions => ['ban'], users => ['bob', 'carol'] },
            { effect => 'allow', actions => ['mute'], users => ['*'] },
            { effect => 'allow', actions => ['unban'], users => ['bob'],
              roles => ['moderator'] },
        ],
        roles => { dave => ['moderator'] },
    },

    actions => {
        rules => [
            { effect => 'allow', actions => ['ban', 'unban'], users => ['bob'] },
            { effect => 'allow', actions => ['*'], users => ['carol'] },
        ],
    },

    deny_first => {
        rules => [
            { effect => 'deny', actions => ['ban'], users => ['bob'] },
            { effect => 'allow', actions => ['*'], users => ['bob'] },
        ],
    },

    allow_first => {
        rules => [
            { effect => 'allow', actions => ['ban'], users => ['bob'] },
            { effect => 'deny', actions => ['*'], users => ['bob'] },
            { effect => 'allow', actions => ['*'], users => ['bob'] },
        ],
    },

    call_types => {
        rules => [
            { effect => 'allow', actions => ['kick_user', 'ban'], users => ['bob'],
              call_types => ['default', 'audio_room'] },
            { effect => 'allow', actions => ['*'], users => ['carol'],
              call_types => ['*'] },
        ],
    },

    when => {
        rules => [
            { effect => 'deny', actions => ['ban'], users => ['*'],
              when => { ip_ban => JSON::PP::true } },
            { effect => 'allow', actions => ['ban'], users => ['*'],
              when => { shadow => JSON::PP::false } },
            { effect => 'allow', actions => ['ban'], users => ['bob'] },
            { effect => 'allow', actions => ['mute'], users => ['*'],
              when => { timeout => 60 } },
            { effect => 'allow', actions => ['unmute'], users => ['*'],
              when => { target_ids => ['u-2', 'u-3'] } },
            { effect => 'allow', actions => ['block_user'], users => ['*'],
              when => { blocked_user_id => 'u-2' } },
        ],
    },

    limits => {
        rules => [
            { effect => 'allow', actions => ['ban', 'mute', 'unban'],
              users => ['bob'], limits => { max_timeout => 60 } },
            { effect => 'allow', actions => ['ban'], users => ['carol'],
              limits => { allow_ip_ban => JSON::PP::false } },
            { effect => 'allow', actions => ['mute_users'], users => ['carol'],
              limits => { allow_mute_all => JSON::PP::false } },
            { effect => 'allow', actions => ['mute', 'deactivate_users'],
              users => ['carol'], limits => { max_targets => 2 } },
            { effect => 'allow', actions => ['mute_users', 'ban'],
              users => ['dave'], limits => { allow_ip_ban => JSON::PP::true } },
        ],
    },

    protected => {
        roles => { root => ['admin'], alice => ['admin'] },
        protected_users => ['alice', 'system-bot'],
        rules => [
            { effect => 'allow', actions => ['*'], roles => ['admin'] },
        ],
    },

    cids => {
        rules => [
            { effect => 'allow', actions => ['*'], users => ['*'] },
        ],
    },

    norules => {
        roles => { bob => ['admin'] },
    },
);

# --------------------------------------------------------------------------
# one server per policy, plus one without stream_mod_policy

my $servers = '';
my $default = ' default_server';

for my $name (sort keys %POLICY, 'nopolicy') {
    my $policy = '';

    if ($name ne 'nopolicy') {
        my $p = $POLICY{$name};
        $t->write_file("policy-$name.json",
            ref $p ? JSON::PP->new->canonical->pretty->encode($p) : $p);
        $policy = "stream_mod_policy %%DIR%%/policy-$name.json;";
    }

    (my $host = $name) =~ tr/_/-/;

    $servers .= <<"CONF";
    server {
        listen 127.0.0.1:%%PORT%%$default;
        server_name $host.test;
        $policy

        location /moderation/ {
            stream_mod on;
            proxy_pass http://stream_api;
        }

        location /calls/ {
            stream_mod on;
            proxy_pass http://stream_api;
        }
    }

CONF

    $default = '';
}

$t->write_config(<<"CONF");
http {
@{[ $t->http_preamble ]}
    log_format audit escape=json
        '\$host|\$stream_mod_decision|\$stream_mod_rule|\$stream_mod_reason';
    access_log %%DIR%%/audit.log audit;

    stream_mod_api_key %%API_KEY%%;
    stream_mod_api_secret_file %%SECRET_FILE%%;

    upstream stream_api {
        server 127.0.0.1:%%EMU_PORT%%;
    }

$servers
}
CONF

$t->run;

like($t->error_log,
    qr/\[warn\] .*policy "[^"]*policy-norules\.json" has no rules: every action is denied/,
    'a policy without rules: NGINX warns at start');
like($t->error_log,
    qr/\[warn\] .*"stream_mod" has no "stream_mod_policy": every action will be denied/,
    'a stream_mod location without a policy: NGINX warns at start');

my $TIMEOUT = $t->valgrind ? 30 : 5;

# --------------------------------------------------------------------------
# helpers

# complete lines only: a line being written may be read half-way
sub audit_lines {
    my $text = do {
        open my $fh, '<', $t->dir . '/audit.log' or return ();
        local $/;
        <$fh>;
    } // '';
    $text =~ s/[^\n]*\z//;
    return split /\n/, $text;
}

# the audit line of the request just sent: wait for it to be written
sub audit_line {
    my ($before) = @_;
    my $end = time + $TIMEOUT;
    my @l;
    while (1) {
        @l = audit_lines();
        last if @l > $before || time > $end;
        sleep 0.005;
    }
    return $l[$before];
}

my %TOKENS;

sub token_for {
    my ($user, %claims) = @_;
    return $t->user_token($user, %claims) if %claims;
    return $TOKENS{$user} //= $t->user_token($user);
}

# send a request as $user to the server of policy $policy
sub send_as {
    my ($policy, $user, $method, $path, %o) = @_;
    my $claims = delete $o{claims} || {};
    my $body = delete $o{body};
    (my $host = $policy) =~ tr/_/-/;

    my @req = (host => "$host.test", token => token_for($user, %$claims));

    if (defined $body) {
        push @req, body => ref $body ? JSON::PP->new->canonical->encode($body)
                                     : $body,
            headers => ['Content-Type' => 'application/json'];
    }

    $t->reset_upstream;
    my $n = audit_lines();
    my $r = $t->request($method, $path, @req);
    return ($r, audit_line($n), "$host.test");
}

# expect: 403, code 17, the exact message; nothing upstream; audit line
sub denied {
    my ($name, $policy, $user, $method, $path, %o) = @_;
    my $rule = delete $o{rule};
    my $message = delete $o{message};

    my ($r, $audit, $host) = send_as($policy, $user, $method, $path, %o);

    is($r->{status}, 403, "$name: 403");
    is_deeply($r->{headers}{'content-type'}, ['application/json'],
        "$name: Content-Type application/json");
    is($r->{body}, api_error_body(403, 17, $message),
        "$name: code 17, \"$message\"");
    is($t->upstream_count, 0, "$name: nothing reached Stream");
    is($audit, "$host|deny|$rule|$message",
        "$name: decision deny, rule $rule, reason in the access log");
}

# expect: Stream's answer, one upstream request, audit line
sub allowed {
    my ($name, $policy, $user, $method, $path, %o) = @_;
    my $rule = delete $o{rule};
    my $upath = delete $o{upath};
    my $status = delete $o{status} // ($method eq 'GET' ? 200 : 201);
    my $ubody = delete $o{ubody};

    my ($r, $audit, $host) = send_as($policy, $user, $method, $path, %o);

    is($r->{status}, $status, "$name: $status from Stream")
        or diag($r->{body});
    my @up = $t->upstream_requests;
    is(scalar @up, 1, "$name: reached Stream once");
    is($up[-1] && $up[-1]{path}, $upath, "$name: upstream path $upath");
    is($up[-1] && $up[-1]{body}, $ubody, "$name: upstream body")
        if defined $ubody;
    is($audit, "$host|allow|$rule|allowed",
        "$name: decision allow, rule $rule in the access log");
}

my $BAN = '/api/v2/moderation/ban';
my $MUTE = '/api/v2/moderation/mute';
my $KICK = '/api/v2/video/call/default/c-1/kick';

###############################################################################
# roles

allowed('roles: bob (moderator in roles) bans', roles => bob =>
    POST => '/moderation/ban', body => { target_user_id => 'u-2' },
    rule => 1, upath => $BAN,
    ubody => '{"banned_by_id":"bob","target_user_id":"u-2"}');

denied('roles: carol (support, host) bans', roles => carol =>
    POST => '/moderation/ban', body => { target_user_id => 'u-2' },
    rule => 'default', message => 'denied: no rule allows ban (default)');

allowed('roles: carol (second role host) kicks', roles => carol =>
    POST => '/calls/default/c-1/kick', body => { user_id => 'u-2' },
    rule => 2, upath => $KICK);

denied('roles: bob (moderator only) kicks', roles => bob =>
    POST => '/calls/default/c-1/kick', body => { user_id => 'u-2' },
    rule => 'default', message => 'denied: no rule allows kick_user (default)');

denied('roles: a token role claim is ignored without role_claim', roles => dave =>
    POST => '/moderation/ban', body => { target_user_id => 'u-2' },
    claims => { role => 'moderator' },
    rule => 'default', message => 'denied: no rule allows ban (default)');

allowed('roles: roles ["*"] matches dave, who has no roles', roles => dave =>
    POST => '/moderation/mute', body => { target_ids => ['u-2'] },
    rule => 3, upath => $MUTE);

###############################################################################
# role_claim

allowed('role_claim: carol with "role": "moderator" bans', claim => carol =>
    POST => '/moderation/ban', body => { target_user_id => 'u-2' },
    claims => { role => 'moderator' }, rule => 1, upath => $BAN);

allowed('role_claim: carol with "role": ["host", "moderator"] bans', claim => carol =>
    POST => '/moderation/ban', body => { target_user_id => 'u-2' },
    claims => { role => ['host', 'moderator'] }, rule => 1, upath => $BAN);

denied('role_claim: carol with "role": "host" bans', claim => carol =>
    POST => '/moderation/ban', body => { target_user_id => 'u-2' },
    claims => { role => 'host' },
    rule => 'default', message => 'denied: no rule allows ban (default)');

denied('role_claim: carol with "role": ["host", "user"] bans', claim => carol =>
    POST => '/moderation/ban', body => { target_user_id => 'u-2' },
    claims => { role => ['host', 'user'] },
    rule => 'default', message => 'denied: no rule allows ban (default)');

denied('role_claim: carol with "role": "Moderator" (case differs) bans', claim => carol =>
    POST => '/moderation/ban', body => { target_user_id => 'u-2' },
    claims => { role => 'Moderator' },
    rule => 'default', message => 'denied: no rule allows ban (default)');

denied('role_claim: carol with "roles": "moderator" (another claim) bans', claim => carol =>
    POST => '/moderation/ban', body => { target_user_id => 'u-2' },
    claims => { roles => 'moderator' },
    rule => 'default', message => 'denied: no rule allows ban (default)');

denied('role_claim: carol with "role": {"moderator": true} bans', claim => carol =>
    POST => '/moderation/ban', body => { target_user_id => 'u-2' },
    claims => { role => { moderator => JSON::PP::true } },
    rule => 'default', message => 'denied: no rule allows ban (default)');

allowed('role_claim: bob (support in roles) with "role": "host" mutes', claim => bob =>
    POST => '/moderation/mute', body => { target_ids => ['u-2'] },
    claims => { role => 'host' }, rule => 2, upath => $MUTE);

###############################################################################
# users

allowed('users: carol (listed) bans', users => carol =>
    POST => '/moderation/ban', body => { target_user_id => 'u-2' },
    rule => 1, upath => $BAN);

denied('users: dave (not listed) bans', users => dave =>
    POST => '/moderation/ban', body => { target_user_id => 'u-2' },
    rule => 'default', message => 'denied: no rule allows ban (default)');

allowed('users: ["*"] lets dave mute', users => dave =>
    POST => '/moderation/mute', body => { target_ids => ['u-2'] },
    rule => 2, upath => $MUTE);

allowed('users and roles: dave matches by role', users => dave =>
    POST => '/moderation/unban?target_user_id=u-2',
    rule => 3, upath => '/api/v2/moderation/unban');

allowed('users and roles: bob matches by user', users => bob =>
    POST => '/moderation/unban?target_user_id=u-2',
    rule => 3, upath => '/api/v2/moderation/unban');

denied('users and roles: carol matches neither', users => carol =>
    POST => '/moderation/unban?target_user_id=u-2',
    rule => 'default', message => 'denied: no rule allows unban (default)');

###############################################################################
# actions

allowed('actions: bob unbans (listed)', actions => bob =>
    POST => '/moderation/unban?target_user_id=u-2',
    rule => 1, upath => '/api/v2/moderation/unban');

denied('actions: bob mutes (not listed)', actions => bob =>
    POST => '/moderation/mute', body => { target_ids => ['u-2'] },
    rule => 'default', message => 'denied: no rule allows mute (default)');

allowed('actions: ["*"] lets carol deactivate_users', actions => carol =>
    POST => '/moderation/users/deactivate', body => { user_ids => ['u-2'] },
    rule => 2, upath => '/api/v2/users/deactivate');

allowed('actions: ["*"] lets carol list blocked users', actions => carol =>
    GET => '/moderation/blocked', rule => 2, upath => '/api/v2/users/block');

allowed('actions: ["*"] lets carol end a call', actions => carol =>
    POST => '/calls/livestream/c-9/mark_ended', rule => 2,
    upath => '/api/v2/video/call/livestream/c-9/mark_ended');

###############################################################################
# rule order: the first matching rule decides

denied('order: deny ban (rule 1) before allow * (rule 2)', deny_first => bob =>
    POST => '/moderation/ban', body => { target_user_id => 'u-2' },
    rule => 1, message => 'denied by rule 1');

allowed('order: mute skips deny ban (rule 1), allow * (rule 2)', deny_first => bob =>
    POST => '/moderation/mute', body => { target_ids => ['u-2'] },
    rule => 2, upath => $MUTE);

allowed('order: allow ban (rule 1) before deny * (rule 2)', allow_first => bob =>
    POST => '/moderation/ban', body => { target_user_id => 'u-2' },
    rule => 1, upath => $BAN);

denied('order: mute: deny * (rule 2) before allow * (rule 3)', allow_first => bob =>
    POST => '/moderation/mute', body => { target_ids => ['u-2'] },
    rule => 2, message => 'denied by rule 2');

###############################################################################
# call_types

allowed('call_types: bob kicks in a default call', call_types => bob =>
    POST => '/calls/default/c-1/kick', body => { user_id => 'u-2' },
    rule => 1, upath => $KICK);

allowed('call_types: bob kicks in an audio_room call', call_types => bob =>
    POST => '/calls/audio_room/c-1/kick', body => { user_id => 'u-2' },
    rule => 1, upath => '/api/v2/video/call/audio_room/c-1/kick');

denied('call_types: bob kicks in a livestream call', call_types => bob =>
    POST => '/calls/livestream/c-1/kick', body => { user_id => 'u-2' },
    rule => 'default', message => 'denied: no rule allows kick_user (default)');

denied('call_types: a rule with call_types does not match ban', call_types => bob =>
    POST => '/moderation/ban', body => { target_user_id => 'u-2' },
    rule => 'default', message => 'denied: no rule allows ban (default)');

allowed('call_types: ["*"] lets carol end a livestream call', call_types => carol =>
    POST => '/calls/livestream/c-1/mark_ended', rule => 2,
    upath => '/api/v2/video/call/livestream/c-1/mark_ended');

denied('call_types: ["*"] with actions ["*"] does not reach mute', call_types => carol =>
    POST => '/moderation/mute', body => { target_ids => ['u-2'] },
    rule => 'default', message => 'denied: no rule allows mute (default)');

###############################################################################
# when

denied('when: ban with "ip_ban": true matches deny rule 1', when => dave =>
    POST => '/moderation/ban', body => '{"target_user_id":"u-2","ip_ban":true}',
    rule => 1, message => 'denied by rule 1');

allowed('when: ban with "ip_ban": false skips rule 1, matches rule 2', when => dave =>
    POST => '/moderation/ban', body => '{"target_user_id":"u-2","ip_ban":false}',
    rule => 2, upath => $BAN);

allowed('when: ban without shadow matches {"shadow": false} (rule 2)', when => dave =>
    POST => '/moderation/ban', body => '{"target_user_id":"u-2"}',
    rule => 2, upath => $BAN);

allowed('when: ban with "shadow": false matches rule 2', when => dave =>
    POST => '/moderation/ban', body => '{"target_user_id":"u-2","shadow":false}',
    rule => 2, upath => $BAN);

denied('when: ban with "shadow": true matches no rule for dave', when => dave =>
    POST => '/moderation/ban', body => '{"target_user_id":"u-2","shadow":true}',
    rule => 'default', message => 'denied: no rule allows ban (default)');

allowed('when: ban with "shadow": true by bob falls to rule 3', when => bob =>
    POST => '/moderation/ban', body => '{"target_user_id":"u-2","shadow":true}',
    rule => 3, upath => $BAN);

allowed('when: mute with "timeout": 60 matches {"timeout": 60}', when => dave =>
    POST => '/moderation/mute', body => '{"target_ids":["u-2"],"timeout":60}',
    rule => 4, upath => $MUTE);

denied('when: mute with "timeout": 59 does not', when => dave =>
    POST => '/moderation/mute', body => '{"target_ids":["u-2"],"timeout":59}',
    rule => 'default', message => 'denied: no rule allows mute (default)');

denied('when: mute without timeout does not match {"timeout": 60}', when => dave =>
    POST => '/moderation/mute', body => '{"target_ids":["u-2"]}',
    rule => 'default', message => 'denied: no rule allows mute (default)');

# a string value, and an array compared as a whole (order and type count)

allowed('when: block with "blocked_user_id": "u-2" matches the string (rule 6)',
    when => dave => POST => '/moderation/block',
    body => '{"blocked_user_id":"u-2"}', rule => 6,
    upath => '/api/v2/users/block');

denied('when: block of "u-3" does not match "u-2"', when => dave =>
    POST => '/moderation/block', body => '{"blocked_user_id":"u-3"}',
    rule => 'default', message => 'denied: no rule allows block_user (default)');

allowed('when: unmute of ["u-2","u-3"] matches the array (rule 5)',
    when => dave => POST => '/moderation/unmute',
    body => '{"target_ids": [ "u-2" , "u-3" ]}', rule => 5,
    upath => '/api/v2/moderation/unmute');

denied('when: unmute of ["u-3","u-2"] does not (order counts)', when => dave =>
    POST => '/moderation/unmute', body => '{"target_ids":["u-3","u-2"]}',
    rule => 'default', message => 'denied: no rule allows unmute (default)');

denied('when: unmute of ["u-2"] does not (a shorter array)', when => dave =>
    POST => '/moderation/unmute', body => '{"target_ids":["u-2"]}',
    rule => 'default', message => 'denied: no rule allows unmute (default)');

###############################################################################
# limits

allowed('max_timeout 60: ban with timeout 60', limits => bob =>
    POST => '/moderation/ban', body => '{"target_user_id":"u-2","timeout":60}',
    rule => 1, upath => $BAN);

allowed('max_timeout 60: ban with timeout 0', limits => bob =>
    POST => '/moderation/ban', body => '{"target_user_id":"u-2","timeout":0}',
    rule => 1, upath => $BAN);

denied('max_timeout 60: ban with timeout 61', limits => bob =>
    POST => '/moderation/ban', body => '{"target_user_id":"u-2","timeout":61}',
    rule => 1, message => 'denied by rule 1: timeout exceeds max_timeout 60');

denied('max_timeout 60: ban with timeout 9007199254740993', limits => bob =>
    POST => '/moderation/ban',
    body => '{"target_user_id":"u-2","timeout":9007199254740993}',
    rule => 1, message => 'denied by rule 1: timeout exceeds max_timeout 60');

denied('max_timeout 60: ban without timeout (permanent)', limits => bob =>
    POST => '/moderation/ban', body => '{"target_user_id":"u-2"}',
    rule => 1, message => 'denied by rule 1: no timeout means permanent, '
        . 'which exceeds max_timeout 60');

denied('max_timeout 60: mute with timeout 61', limits => bob =>
    POST => '/moderation/mute', body => '{"target_ids":["u-2"],"timeout":61}',
    rule => 1, message => 'denied by rule 1: timeout exceeds max_timeout 60');

denied('max_timeout 60: mute without timeout (permanent)', limits => bob =>
    POST => '/moderation/mute', body => '{"target_ids":["u-2"]}',
    rule => 1, message => 'denied by rule 1: no timeout means permanent, '
        . 'which exceeds max_timeout 60');

allowed('max_timeout 60: mute with timeout 30', limits => bob =>
    POST => '/moderation/mute', body => '{"target_ids":["u-2"],"timeout":30}',
    rule => 1, upath => $MUTE);

allowed('max_timeout 60: does not apply to unban', limits => bob =>
    POST => '/moderation/unban?target_user_id=u-2',
    rule => 1, upath => '/api/v2/moderation/unban');

denied('allow_ip_ban false: ban with "ip_ban": true', limits => carol =>
    POST => '/moderation/ban', body => '{"target_user_id":"u-2","ip_ban":true}',
    rule => 2, message => 'denied by rule 2: ip_ban is not allowed (allow_ip_ban)');

allowed('allow_ip_ban false: ban with "ip_ban": false', limits => carol =>
    POST => '/moderation/ban', body => '{"target_user_id":"u-2","ip_ban":false}',
    rule => 2, upath => $BAN);

allowed('allow_ip_ban false: ban without ip_ban', limits => carol =>
    POST => '/moderation/ban', body => '{"target_user_id":"u-2"}',
    rule => 2, upath => $BAN);

allowed('allow_ip_ban true: ban with "ip_ban": true', limits => dave =>
    POST => '/moderation/ban', body => '{"target_user_id":"u-2","ip_ban":true}',
    rule => 5, upath => $BAN);

denied('allow_mute_all false: mute_users with "mute_all_users": true', limits => carol =>
    POST => '/calls/default/c-1/mute_users',
    body => '{"mute_all_users":true,"audio":true}',
    rule => 3, message => 'denied by rule 3: mute_all_users is not allowed '
        . '(allow_mute_all)');

allowed('allow_mute_all false: mute_users with user_ids', limits => carol =>
    POST => '/calls/default/c-1/mute_users',
    body => '{"user_ids":["u-1"],"audio":true}',
    rule => 3, upath => '/api/v2/video/call/default/c-1/mute_users');

allowed('allow_mute_all false: mute_users with "mute_all_users": false', limits => carol =>
    POST => '/calls/default/c-1/mute_users',
    body => '{"mute_all_users":false,"user_ids":["u-1"],"audio":true}',
    rule => 3, upath => '/api/v2/video/call/default/c-1/mute_users');

allowed('no allow_mute_all: mute_users with "mute_all_users": true', limits => dave =>
    POST => '/calls/default/c-1/mute_users',
    body => '{"mute_all_users":true,"audio":true}',
    rule => 5, upath => '/api/v2/video/call/default/c-1/mute_users');

denied('max_targets 2: mute with 3 target_ids', limits => carol =>
    POST => '/moderation/mute', body => '{"target_ids":["u-1","u-2","u-3"]}',
    rule => 4, message => 'denied by rule 4: 3 targets exceed max_targets 2');

denied('max_targets 2: mute with one id three times', limits => carol =>
    POST => '/moderation/mute', body => '{"target_ids":["u-1","u-1","u-1"]}',
    rule => 4, message => 'denied by rule 4: 3 targets exceed max_targets 2');

allowed('max_targets 2: mute with 2 target_ids', limits => carol =>
    POST => '/moderation/mute', body => '{"target_ids":["u-1","u-2"]}',
    rule => 4, upath => $MUTE);

denied('max_targets 2: deactivate_users with 3 user_ids', limits => carol =>
    POST => '/moderation/users/deactivate',
    body => '{"user_ids":["u-1","u-2","u-3"]}',
    rule => 4, message => 'denied by rule 4: 3 targets exceed max_targets 2');

###############################################################################
# protected_users: denied to admins too, whatever the rules say

my $PROT = 'denied: alice is a protected user (protected_users)';

for my $c (
    ['ban of alice', POST => '/moderation/ban', '{"target_user_id":"alice"}'],
    ['mute of ["u-1", "alice"]', POST => '/moderation/mute',
     '{"target_ids":["u-1","alice"]}'],
    ['unmute of ["alice"]', POST => '/moderation/unmute', '{"target_ids":["alice"]}'],
    ['deactivate_user /moderation/users/alice/deactivate',
     POST => '/moderation/users/alice/deactivate', undef],
    ['reactivate_user /moderation/users/alice/reactivate',
     POST => '/moderation/users/alice/reactivate', '{}'],
    ['unban with ?target_user_id=alice', POST => '/moderation/unban?target_user_id=alice',
     undef],
    ['unban (DELETE) with alice in the body', DELETE => '/moderation/ban',
     '{"target_user_id":"alice"}'],
    ['deactivate_users of ["u-1", "alice"]', POST => '/moderation/users/deactivate',
     '{"user_ids":["u-1","alice"]}'],
    ['reactivate_users of ["alice"]', POST => '/moderation/users/reactivate',
     '{"user_ids":["alice"]}'],
    ['export_users of ["u-1", "alice"]', POST => '/moderation/users/export',
     '{"user_ids":["u-1","alice"]}'],
    ['block of alice', POST => '/moderation/block', '{"blocked_user_id":"alice"}'],
    ['unblock of alice', POST => '/moderation/unblock', '{"blocked_user_id":"alice"}'],
    ['mute_users of ["alice"]', POST => '/calls/default/c-1/mute_users',
     '{"user_ids":["alice"],"audio":true}'],
    ['kick of alice', POST => '/calls/default/c-1/kick', '{"user_id":"alice"}'],
    ['block_call_user of alice', POST => '/calls/default/c-1/block', '{"user_id":"alice"}'],
    ['unblock_call_user of alice', POST => '/calls/default/c-1/unblock', '{"user_id":"alice"}'],
    ['update_user_permissions of alice', POST => '/calls/default/c-1/user_permissions',
     '{"user_id":"alice","grant_permissions":["screenshare"]}'],
    )
{
    my ($what, $method, $path, $body) = @$c;
    denied("protected_users: admin root: $what", protected => root =>
        $method => $path, defined $body ? (body => $body) : (),
        rule => 'protected_users', message => $PROT);
}

denied('protected_users: alice (admin) bans herself', protected => alice =>
    POST => '/moderation/ban', body => '{"target_user_id":"alice"}',
    rule => 'protected_users', message => $PROT);

denied('protected_users: the second protected user system-bot', protected => root =>
    POST => '/moderation/mute', body => '{"target_ids":["u-1","system-bot"]}',
    rule => 'protected_users',
    message => 'denied: system-bot is a protected user (protected_users)');

allowed('protected_users: root bans alice-2 (not protected)', protected => root =>
    POST => '/moderation/ban', body => '{"target_user_id":"alice-2"}',
    rule => 1, upath => $BAN);

allowed('protected_users: alice (admin) bans u-2', protected => alice =>
    POST => '/moderation/ban', body => '{"target_user_id":"u-2"}',
    rule => 1, upath => $BAN);

allowed('protected_users: mute_all_users names no target', protected => root =>
    POST => '/calls/default/c-1/mute_users',
    body => '{"mute_all_users":true,"audio":true}',
    rule => 1, upath => '/api/v2/video/call/default/c-1/mute_users');

###############################################################################
# call_cids in the token

allowed('call_cids ["default:c-1"]: kick in default:c-1', cids => hana =>
    POST => '/calls/default/c-1/kick', body => { user_id => 'u-2' },
    claims => { call_cids => ['default:c-1'] }, rule => 1, upath => $KICK);

denied('call_cids ["default:c-1"]: kick in default:c-2', cids => hana =>
    POST => '/calls/default/c-2/kick', body => { user_id => 'u-2' },
    claims => { call_cids => ['default:c-1'] }, rule => 'call_cids',
    message => 'denied: the token is not valid for call default:c-2 (call_cids)');

denied('call_cids ["default:c-1"]: end_call in audio_room:c-1', cids => hana =>
    POST => '/calls/audio_room/c-1/mark_ended',
    claims => { call_cids => ['default:c-1'] }, rule => 'call_cids',
    message => 'denied: the token is not valid for call audio_room:c-1 (call_cids)');

allowed('call_cids ["default:c-1"]: ban is not a call action', cids => hana =>
    POST => '/moderation/ban', body => { target_user_id => 'u-2' },
    claims => { call_cids => ['default:c-1'] }, rule => 1, upath => $BAN);

denied('call_cids "default:c-1" (not an array): kick in default:c-1', cids => hana =>
    POST => '/calls/default/c-1/kick', body => { user_id => 'u-2' },
    claims => { call_cids => 'default:c-1' }, rule => 'call_cids',
    message => 'denied: the token is not valid for call default:c-1 (call_cids)');

denied('call_cids []: kick in default:c-1', cids => hana =>
    POST => '/calls/default/c-1/kick', body => { user_id => 'u-2' },
    claims => { call_cids => [] }, rule => 'call_cids',
    message => 'denied: the token is not valid for call default:c-1 (call_cids)');

allowed('no call_cids: kick in default:c-2', cids => hana =>
    POST => '/calls/default/c-2/kick', body => { user_id => 'u-2' },
    rule => 1, upath => '/api/v2/video/call/default/c-2/kick');

###############################################################################
# a policy without rules; no policy at all: every action is denied

my @EVERY = (
    [ban => POST => '/moderation/ban', '{"target_user_id":"u-2"}'],
    [unban => POST => '/moderation/unban?target_user_id=u-2', undef],
    [mute => POST => '/moderation/mute', '{"target_ids":["u-2"]}'],
    [unmute => POST => '/moderation/unmute', '{"target_ids":["u-2"]}'],
    [block_user => POST => '/moderation/block', '{"blocked_user_id":"u-2"}'],
    [unblock_user => POST => '/moderation/unblock', '{"blocked_user_id":"u-2"}'],
    [blocked_users => GET => '/moderation/blocked', undef],
    [deactivate_user => POST => '/moderation/users/u-2/deactivate', undef],
    [reactivate_user => POST => '/moderation/users/u-2/reactivate', undef],
    [deactivate_users => POST => '/moderation/users/deactivate', '{"user_ids":["u-2"]}'],
    [reactivate_users => POST => '/moderation/users/reactivate', '{"user_ids":["u-2"]}'],
    [export_users => POST => '/moderation/users/export', '{"user_ids":["u-2"]}'],
    [get_task => GET => '/moderation/tasks/t-1', undef],
    [mute_users => POST => '/calls/default/c-1/mute_users', '{"user_ids":["u-2"]}'],
    [block_call_user => POST => '/calls/default/c-1/block', '{"user_id":"u-2"}'],
    [unblock_call_user => POST => '/calls/default/c-1/unblock', '{"user_id":"u-2"}'],
    [kick_user => POST => '/calls/default/c-1/kick', '{"user_id":"u-2"}'],
    [update_user_permissions => POST => '/calls/default/c-1/user_permissions',
     '{"user_id":"u-2"}'],
    [end_call => POST => '/calls/default/c-1/mark_ended', undef],
    [request_permission => POST => '/calls/default/c-1/request_permission',
     '{"permissions":["send-audio"]}'],
);

for my $c (@EVERY) {
    my ($action, $method, $path, $body) = @$c;
    denied("no rules: bob (admin) $action", norules => bob =>
        $method => $path, defined $body ? (body => $body) : (),
        rule => 'default', message => "denied: no rule allows $action (default)");
}

for my $c (@EVERY) {
    my ($action, $method, $path, $body) = @$c;
    denied("no policy: $action", nopolicy => bob =>
        $method => $path, defined $body ? (body => $body) : (),
        rule => 'default', message => 'denied: no policy is configured (default)');
}

###############################################################################
# the SPEC's example policy

allowed('example: moderator bob bans for 60 minutes', example => bob =>
    POST => '/moderation/ban', body => '{"target_user_id":"carol","timeout":60}',
    rule => 2, upath => $BAN,
    ubody => '{"banned_by_id":"bob","target_user_id":"carol","timeout":60}');

denied('example: bob bans for 61 minutes', example => bob =>
    POST => '/moderation/ban', body => '{"target_user_id":"carol","timeout":61}',
    rule => 2, message => 'denied by rule 2: timeout exceeds max_timeout 60');

denied('example: bob bans permanently (no timeout)', example => bob =>
    POST => '/moderation/ban', body => '{"target_user_id":"carol"}',
    rule => 2, message => 'denied by rule 2: no timeout means permanent, '
        . 'which exceeds max_timeout 60');

denied('example: bob bans with ip_ban', example => bob =>
    POST => '/moderation/ban',
    body => '{"target_user_id":"carol","timeout":10,"ip_ban":true}',
    rule => 1, message => 'denied by rule 1');

allowed('example: bob unbans', example => bob =>
    POST => '/moderation/unban?target_user_id=carol',
    rule => 2, upath => '/api/v2/moderation/unban');

allowed('example: bob mutes in a default call', example => bob =>
    POST => '/calls/default/c-1/mute_users', body => '{"user_ids":["carol"]}',
    rule => 3, upath => '/api/v2/video/call/default/c-1/mute_users');

allowed('example: bob kicks in an audio_room call', example => bob =>
    POST => '/calls/audio_room/r-1/kick', body => '{"user_id":"carol"}',
    rule => 3, upath => '/api/v2/video/call/audio_room/r-1/kick');

denied('example: bob kicks in a livestream call', example => bob =>
    POST => '/calls/livestream/l-1/kick', body => '{"user_id":"carol"}',
    rule => 'default', message => 'denied: no rule allows kick_user (default)');

denied('example: bob deactivates a user', example => bob =>
    POST => '/moderation/users/carol/deactivate',
    rule => 'default', message => 'denied: no rule allows deactivate_user (default)');

denied('example: bob bans alice (protected)', example => bob =>
    POST => '/moderation/ban', body => '{"target_user_id":"alice","timeout":5}',
    rule => 'protected_users', message => $PROT);

denied('example: admin alice bans herself (protected)', example => alice =>
    POST => '/moderation/ban', body => '{"target_user_id":"alice"}',
    rule => 'protected_users', message => $PROT);

denied('example: admin alice deactivates herself (protected)', example => alice =>
    POST => '/moderation/users/alice/deactivate',
    rule => 'protected_users', message => $PROT);

allowed('example: admin alice bans bob permanently', example => alice =>
    POST => '/moderation/ban', body => '{"target_user_id":"bob"}',
    rule => 4, upath => $BAN);

allowed('example: admin alice bans with ip_ban', example => alice =>
    POST => '/moderation/ban', body => '{"target_user_id":"bob","ip_ban":true}',
    rule => 4, upath => $BAN);

allowed('example: admin alice deactivates users', example => alice =>
    POST => '/moderation/users/deactivate', body => '{"user_ids":["bob","carol"]}',
    rule => 4, upath => '/api/v2/users/deactivate',
    ubody => '{"created_by_id":"alice","user_ids":["bob","carol"]}');

allowed('example: admin alice ends a livestream call', example => alice =>
    POST => '/calls/livestream/l-1/mark_ended',
    rule => 4, upath => '/api/v2/video/call/livestream/l-1/mark_ended');

allowed('example: carol (no role) blocks dave', example => carol =>
    POST => '/moderation/block', body => '{"blocked_user_id":"dave"}',
    rule => 5, upath => '/api/v2/users/block',
    ubody => '{"user_id":"carol","blocked_user_id":"dave"}');

allowed('example: carol unblocks dave', example => carol =>
    POST => '/moderation/unblock', body => '{"blocked_user_id":"dave"}',
    rule => 5, upath => '/api/v2/users/unblock');

allowed('example: carol lists the users she blocks', example => carol =>
    GET => '/moderation/blocked', rule => 5, upath => '/api/v2/users/block');

allowed('example: carol requests a permission', example => carol =>
    POST => '/calls/default/c-1/request_permission',
    body => '{"permissions":["screenshare"]}',
    rule => 5, upath => '/api/v2/video/call/default/c-1/request_permission');

denied('example: carol bans', example => carol =>
    POST => '/moderation/ban', body => '{"target_user_id":"dave","timeout":5}',
    rule => 'default', message => 'denied: no rule allows ban (default)');

denied('example: carol mutes in a call', example => carol =>
    POST => '/calls/default/c-1/mute_users', body => '{"user_ids":["dave"]}',
    rule => 'default', message => 'denied: no rule allows mute_users (default)');

allowed('example: carol with "role": "moderator" in her token bans for 30 minutes',
    example => carol =>
    POST => '/moderation/ban', body => '{"target_user_id":"dave","timeout":30}',
    claims => { role => 'moderator' }, rule => 2, upath => $BAN);

denied('example: carol with "role": ["moderator"] bans with ip_ban', example => carol =>
    POST => '/moderation/ban',
    body => '{"target_user_id":"dave","timeout":30,"ip_ban":true}',
    claims => { role => ['moderator'] }, rule => 1, message => 'denied by rule 1');

$t->stop;

done_testing;
