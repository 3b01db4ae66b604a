#!/usr/bin/perl

# Configuration (SPEC section 2 and 5): what `nginx -t` refuses, naming the
# directive, the file and for the policy the line and column; what it only
# warns about; and reloads: a broken policy or a resized limit zone keeps
# the running configuration, a valid policy, a new rate and a new secret
# take effect.

use strict;
use warnings;

use Test::More;
use JSON::PP;
use Digest::SHA qw(hmac_sha256);

use lib 't/lib';
use StreamMod::Test qw(b64url);

my $t = StreamMod::Test->new;
my $d = $t->dir;

my $allow_all = { rules => [ { effect => 'allow', actions => ['*'], users => ['*'] } ] };
$t->write_policy($allow_all);

# A config that passes, to derive broken ones from.
my $base = $t->default_config;

# nginx -t must fail; the output must carry $re on an [emerg] line.
# line => qr//: the "in FILE:LINE" of that [emerg] line must be the line
# of the written config that matches the regex (the offending directive).
sub refused {
    my ($name, $conf, $re, %o) = @_;
    my ($rc, $out) = $t->nginx_test_config($conf);
    isnt($rc, 0, "$name: nginx -t exits non-zero");
    like($out, qr/^nginx: \[emerg\] $re/m, "$name: the [emerg] line says why")
        or diag($out);
    like($out, qr/test failed/, "$name: nginx -t reports the test failed");
    if ($o{line}) {
        my ($file, $line) = $out =~ /^nginx: \[emerg\] .* in (\S+):(\d+)$/m;
        my @lines = defined $file ? split /\n/, $t->slurp($file) : ();
        ok(defined $line && defined $lines[$line - 1] && $lines[$line - 1] =~ $o{line},
            "$name: the message points at the directive's line in the config")
            or diag("points at " . ($file // '?') . ":" . ($line // '?') . ": "
                . (defined $line ? $lines[$line - 1] // '' : ''));
    }
    return $out;
}

sub accepted_with_warning {
    my ($name, $conf, $re) = @_;
    my ($rc, $out) = $t->nginx_test_config($conf);
    is($rc, 0, "$name: nginx -t exits 0");
    like($out, qr/^nginx: \[warn\] $re/m, "$name: the [warn] line says why") or diag($out);
    unlike($out, qr/\[emerg\]/, "$name: no [emerg]");
    return $out;
}

# --------------------------------------------------------------------------
# directives

{
    my ($rc, $out) = $t->nginx_test_config($base);
    is($rc, 0, 'the base config passes nginx -t') or diag($out);
    unlike($out, qr/\[(?:warn|emerg)\]/, 'the base config: no warning');
}

refused('stream_mod on without stream_mod_api_key',
    $base =~ s/^\s*stream_mod_api_key .*\n//mr,
    qr/"stream_mod" requires "stream_mod_api_key" in /);

refused('stream_mod on without stream_mod_api_secret_file',
    $base =~ s/^\s*stream_mod_api_secret_file .*\n//mr,
    qr/"stream_mod" requires "stream_mod_api_secret_file" in /);

refused('stream_mod_api_secret_file naming a missing file',
    $base =~ s/%%SECRET_FILE%%/$d\/no-such-secret/r,
    qr/open\(\) "\Q$d\E\/no-such-secret" failed \(2: No such file or directory\) in /,
    line => qr/stream_mod_api_secret_file \Q$d\E\/no-such-secret;/);

$t->write_file('secret-empty', '', 0600);
refused('stream_mod_api_secret_file naming an empty file',
    $base =~ s/%%SECRET_FILE%%/$d\/secret-empty/r,
    qr/secret file "\Q$d\E\/secret-empty" is empty in /,
    line => qr/stream_mod_api_secret_file \Q$d\E\/secret-empty;/);

$t->write_file('secret-newline', "\n", 0600);
refused('stream_mod_api_secret_file naming a file with only "\n"',
    $base =~ s/%%SECRET_FILE%%/$d\/secret-newline/r,
    qr/secret file "\Q$d\E\/secret-newline" is empty in /,
    line => qr/stream_mod_api_secret_file \Q$d\E\/secret-newline;/);

$t->write_file('secret-crlf', "\r\nsecond-line\n", 0600);
refused('stream_mod_api_secret_file whose first line is empty ("\r\n", then text)',
    $base =~ s/%%SECRET_FILE%%/$d\/secret-crlf/r,
    qr/secret file "\Q$d\E\/secret-crlf" is empty in /);

refused('stream_mod_identity bogus',
    $t->default_config(http => 'stream_mod_identity bogus;'),
    qr/invalid value "bogus": use "token" or a \$variable in /,
    line => qr/stream_mod_identity bogus;/);

refused('stream_mod_limit_zone with no rate',
    $t->default_config(http => 'stream_mod_limit_zone zone=mods:1m;'),
    qr/invalid number of arguments in "stream_mod_limit_zone" directive in /,
    line => qr/stream_mod_limit_zone zone=mods:1m;/);

refused('stream_mod_limit_zone with no rate (two arguments, no rate=)',
    $t->default_config(http => 'stream_mod_limit_zone zone=mods:1m zone=other:1m;'),
    qr/"stream_mod_limit_zone" must have "zone" and "rate" parameters in /,
    line => qr/stream_mod_limit_zone zone=mods:1m zone=other:1m;/);

refused('stream_mod_limit_zone with rate=10r/h',
    $t->default_config(http => 'stream_mod_limit_zone zone=mods:1m rate=10r/h;'),
    qr/invalid rate "rate=10r\/h": use Nr\/s or Nr\/m in /,
    line => qr/rate=10r\/h;/);

refused('stream_mod_limit_zone with rate=0r/s',
    $t->default_config(http => 'stream_mod_limit_zone zone=mods:1m rate=0r/s;'),
    qr/invalid rate "rate=0r\/s" in /);

refused('stream_mod_limit_zone with a 1k zone',
    $t->default_config(http => 'stream_mod_limit_zone zone=mods:1k rate=10r/s;'),
    qr/zone "zone=mods:1k" is too small in /,
    line => qr/zone=mods:1k/);

refused('stream_mod_limit_zone with the same zone name twice',
    $t->default_config(http => "stream_mod_limit_zone zone=mods:1m rate=10r/s;\n"
        . "    stream_mod_limit_zone zone=mods:1m rate=20r/s;"),
    qr/stream_mod_limit_zone "mods" is already defined in /,
    line => qr/rate=20r\/s;/);

# NGINX's generic check catches the unknown zone only after parsing, with no
# file and no directive; the brief asks the message to name the directive.
{
    my $out = refused('stream_mod_limit with an unknown zone',
        $t->default_config(location => 'stream_mod_limit zone=nope;'),
        qr/.*"nope"/);
    like($out, qr/^nginx: \[emerg\] .*stream_mod_limit\b.*"nope"/m,
        'stream_mod_limit with an unknown zone: the [emerg] line names the directive');
}

refused('stream_mod_cors_origins example.com (no scheme)',
    $t->default_config(http => 'stream_mod_cors_origins https://ok.example example.com;'),
    qr/invalid origin "example\.com": an origin is scheme:\/\/host\[:port\] in /,
    line => qr/stream_mod_cors_origins https:\/\/ok\.example example\.com;/);

refused('stream_mod_policy naming a missing file',
    $base =~ s/policy\.json/no-such-policy.json/r,
    qr/open\(\) "\Q$d\E\/no-such-policy\.json" failed \(2: No such file or directory\) in /,
    line => qr/stream_mod_policy \Q$d\E\/no-such-policy\.json;/);

# warnings: accepted, exit 0

accepted_with_warning('stream_mod on without stream_mod_policy',
    $base =~ s/^\s*stream_mod_policy .*\n//mr,
    qr/"stream_mod" has no "stream_mod_policy": every action will be denied in /);

$t->write_file('secret-0644', $t->api_secret . "\n", 0644);
accepted_with_warning('stream_mod_api_secret_file with mode 0644',
    $base =~ s/%%SECRET_FILE%%/$d\/secret-0644/r,
    qr/secret file "\Q$d\E\/secret-0644" is readable by others in /);

{
    my ($rc, $out) = $t->nginx_test_config($base);
    unlike($out, qr/readable by others/, 'stream_mod_api_secret_file with mode 0600: no warning');
}

# --------------------------------------------------------------------------
# policy file errors: file, line and column

# A multi-line policy; each broken variant changes one thing in it.
my $policy = <<'JSON';
{
  "roles": { "alice": ["admin"] },
  "rules": [
    { "effect": "allow", "actions": ["ban"], "roles": ["admin"] },
    {
      "effect": "allow",
      "actions": ["mute", "unmute"],
      "users": ["*"],
      "limits": { "max_timeout": 60 }
    }
  ]
}
JSON

sub policy_refused {
    my ($name, $text, $line, $col, $msg) = @_;
    (my $file = "policy-$name.json") =~ s/[^A-Za-z0-9.-]+/-/g;
    $t->write_file($file, $text);
    refused("policy with $name",
        $base =~ s/policy\.json/$file/r,
        qr/policy "\Q$d\/$file\E", line $line, column $col: \Q$msg\E in \S+:\d+(?=\n|\z)/,
        line => qr/stream_mod_policy \Q$d\/$file\E;/);
}

{
    $t->write_file('policy-good.json', $policy);
    my ($rc, $out) = $t->nginx_test_config($base =~ s/policy\.json/policy-good.json/r);
    is($rc, 0, 'the multi-line policy itself passes nginx -t') or diag($out);
}

sub edit {
    my ($from, $to) = @_;
    my $p = $policy;
    my $n = $p =~ s/\Q$from\E/$to/;
    die "edit: '$from' not in the policy" unless $n;
    return $p;
}

# JSON syntax errors: the position is jansson's (the end of the token it
# choked on)
policy_refused('a missing comma (malformed JSON)',
    edit('"users": ["*"],', '"users": ["*"]'),
    9, 14, q('}' expected near '"limits"'));

policy_refused('text after the object',
    "$policy]\n", 13, 1, q{end of file expected near ']'});

policy_refused('a duplicate key in a rule',
    edit('"effect": "allow", "actions": ["ban"]',
         '"effect": "allow", "actions": ["ban"], "actions": ["mute"]'),
    4, 54, q{duplicate object key near '"actions"'});

# semantic errors: the position of the key the message names
policy_refused('an unknown top-level key',
    edit('"roles": {', '"roels": {'),
    2, 3, 'unknown key "roels"');

policy_refused('an unknown top-level key after "rules"',
    edit("  ]\n}", qq{  ],\n  "version": 2\n}) . "}\n",
    12, 3, 'unknown key "version"');

policy_refused('an unknown rule key',
    edit(qq{"users": ["*"],\n}, qq{"users": ["*"],\n      "usres": ["bob"],\n}),
    9, 7, 'rule 2: unknown key "usres"');

policy_refused('an unknown action name',
    edit('"unmute"]', '"unmte"]'),
    7, 7, 'rule 2: unknown action "unmte"');

policy_refused('"actions": "ban" (a string, not an array)',
    edit('"actions": ["mute", "unmute"]', '"actions": "ban"'),
    7, 7, '"actions" must be an array of non-empty strings');

policy_refused('"max_timeout": "60" (a string)',
    edit('"max_timeout": 60', '"max_timeout": "60"'),
    9, 19, 'rule 2: "max_timeout" must be a non-negative integer');

policy_refused('"max_timeout": -1',
    edit('"max_timeout": 60', '"max_timeout": -1'),
    9, 19, 'rule 2: "max_timeout" must be a non-negative integer');

policy_refused('"allow_ip_ban": 1 (a number)',
    edit('"max_timeout": 60', '"allow_ip_ban": 1'),
    9, 19, 'rule 2: "allow_ip_ban" must be true or false');

policy_refused('an unknown limit',
    edit('"max_timeout": 60', '"max_timeout": 60, "max_bans": 3'),
    9, 38, 'rule 2: unknown limit "max_bans"');

policy_refused('"effect": "permit"',
    edit(qq{"effect": "allow",\n      "actions": ["mute"}, qq{"effect": "permit",\n      "actions": ["mute"}),
    6, 7, 'rule 2: "effect" must be "allow" or "deny"');

# a rule without users/roles: the rule's first key; for the first rule, the
# "rules" key (documented in docs/policy.md)
policy_refused('a rule (rule 2) without users or roles',
    edit(qq{      "users": ["*"],\n}, ''),
    6, 7, 'rule 2 needs "users" or "roles" (use ["*"] for anyone)');

policy_refused('a rule (rule 1) without users or roles',
    edit(', "roles": ["admin"] }', ' }'),
    3, 3, 'rule 1 needs "users" or "roles" (use ["*"] for anyone)');

policy_refused('limits on a deny rule',
    edit(qq{"effect": "allow",\n      "actions": ["mute"}, qq{"effect": "deny",\n      "actions": ["mute"}),
    9, 7, 'rule 2: "limits" apply to allow rules only');

policy_refused('a JSON array instead of an object',
    "[\n  1\n]\n", 1, 1, 'the policy must be a JSON object');

# --------------------------------------------------------------------------
# reloads

# Restart the emulator so it reads the (new) API secret file; the harness
# has no public method for this.
sub restart_emulator {
    $t->restart_emulator;
}

# payload of an HS256 JWT signed with $secret, else undef
sub verify_with {
    my ($jwt, $secret) = @_;
    my ($h, $p, $s) = split /\./, $jwt // '', -1;
    return undef unless defined $s;
    return undef unless b64url(hmac_sha256("$h.$p", $secret)) eq $s;
    return JSON::PP->new->utf8->decode(StreamMod::Test::b64url_decode($p));
}

sub live_config {
    my ($zone) = @_;
    return $t->default_config(
        http     => "stream_mod_limit_zone $zone;",
        location => 'stream_mod_limit zone=mods burst=100;',
    );
}

# policy A: mod-1 may ban; nothing else
my $policy_a = { rules => [ { effect => 'allow', actions => ['ban'], users => ['mod-1'] } ] };
# policy B: mod-1 may mute; nothing else
my $policy_b = { rules => [ { effect => 'allow', actions => ['mute'], users => ['mod-1'] } ] };

$t->write_policy($policy_a);
$t->write_config(live_config('zone=mods:64k rate=100r/s'));
$t->allow_log(qr/\[emerg\] .*policy ".*policy\.json", line \d+, column \d+/,
    qr/\[emerg\] .*zone "mods" cannot change its size/);
$t->run;

my $token = $t->user_token('mod-1');

sub ban {
    my (%o) = @_;
    return $t->request(POST => '/moderation/ban', token => $o{token} // $token,
        json => { target_user_id => 'u-2', timeout => 10 });
}

sub mute {
    return $t->request(POST => '/moderation/mute', token => $token,
        json => { target_ids => ['u-2'] });
}

sub denied_ok {
    my ($r, $msg, $name) = @_;
    is($r->{status}, 403, "$name: 403");
    is_deeply($r->{json}, { code => 17, message => $msg, StatusCode => 403,
        duration => '0.00ms', more_info => '', details => [] },
        "$name: APIError code 17 naming the decision");
    is_deeply($r->{headers}{'content-type'}, ['application/json'],
        "$name: Content-Type application/json");
}

$t->reset_upstream;
my $r = ban();
is($r->{status}, 201, 'policy A: POST /moderation/ban by mod-1 answers 201');
is($t->upstream_count, 1, 'policy A: the ban reached the upstream');
$t->reset_upstream;
denied_ok(mute(), 'denied: no rule allows mute (default)',
    'policy A: POST /moderation/mute by mod-1');
is($t->upstream_count, 0, 'policy A: the denied mute did not reach the upstream');

# a broken policy: the reload is refused, policy A keeps serving

$t->write_file('policy.json', qq({"rules": [ { "effect": "allow", "actions": ["mute"] } ]}\n));
ok(!$t->reload, 'reload with a broken policy (a rule without users/roles) is refused');
unless ($t->valgrind) {
    like($t->error_log, qr/\[emerg\] .*policy "\Q$d\E\/policy\.json", line 1, column 2: rule 1 needs "users" or "roles"/,
        'the refused reload logs the policy error with file, line and column');
}

$t->reset_upstream;
$r = ban();
is($r->{status}, 201, 'after the refused reload: ban by mod-1 still answers 201 (policy A)');
is($t->upstream_count, 1, 'after the refused reload: the ban still reaches the upstream');
$t->reset_upstream;
denied_ok(mute(), 'denied: no rule allows mute (default)',
    'after the refused reload: mute by mod-1 still denied (policy A)');
is($t->upstream_count, 0, 'after the refused reload: the mute did not reach the upstream');

# a valid new policy takes effect

$t->write_policy($policy_b);
ok($t->reload, 'reload with a new valid policy (B) succeeds');

$t->reset_upstream;
$r = mute();
is($r->{status}, 201, 'policy B: mute by mod-1 answers 201') or diag($r->{body});
is($t->upstream_count, 1, 'policy B: the mute reached the upstream');
is($t->last_upstream->{path}, '/api/v2/moderation/mute', 'policy B: upstream path');
$t->reset_upstream;
denied_ok(ban(), 'denied: no rule allows ban (default)', 'policy B: ban by mod-1 now denied');
is($t->upstream_count, 0, 'policy B: the denied ban did not reach the upstream');

# a limit zone cannot change its size on reload

SKIP: {
    skip 'with STREAM_MOD_VALGRIND=1 a reload is a restart: a new size is legitimate', 6
        if $t->valgrind && $t->valgrind ne 'master';

    my $off = length $t->error_log;
    ok(!$t->reload(live_config('zone=mods:128k rate=100r/s')),
        'reload changing zone "mods" from 64k to 128k is refused');
    like(substr($t->error_log, $off),
        qr/\[emerg\] .*zone "mods" cannot change its size from 65536 to 131072 on reload: the buckets would be lost; restart NGINX or use a new zone name/,
        'the refused reload names the zone and both sizes');

    $t->reset_upstream;
    $r = mute();
    is($r->{status}, 201, 'after the refused resize: mute still answers 201');
    is($t->upstream_count, 1, 'after the refused resize: the old configuration still forwards');

    my ($rc, $out) = $t->nginx_test_config(live_config('zone=mods:128k rate=100r/s'));
    is($rc, 0, 'nginx -t (no running cycle) accepts the same 128k zone') or diag($out);
    unlike($out, qr/cannot change/, 'nginx -t does not compare against the running sizes');
}

{
    my $off = length $t->error_log;
    ok($t->reload(live_config('zone=mods:64k rate=50r/m')),
        'reload changing only the rate of zone "mods" succeeds');
    unlike(substr($t->error_log, $off), qr/cannot change|\[emerg\]/,
        'the rate-only reload logs no error');
    $t->reset_upstream;
    $r = mute();
    is($r->{status}, 201, 'after the rate-only reload: mute answers 201');
    is($t->upstream_count, 1, 'after the rate-only reload: the mute reached the upstream');
}

# the API secret is re-read on reload

my $old_secret = $t->api_secret;
my $new_secret = 'n3w-secret-after-rotation-9876543210';
my $old_token = $t->user_token('mod-1');
my $new_token = $t->token({ user_id => 'mod-1', iat => time, exp => time + 3600 },
    secret => $new_secret);

$t->write_file($t->secret_file, "$new_secret\n", 0600);
restart_emulator();    # Stream now knows the new secret too
ok($t->reload, 'reload after the secret file changed succeeds');

$t->reset_upstream;
$r = $t->request(POST => '/moderation/mute', token => $new_token,
    json => { target_ids => ['u-2'] });
is($r->{status}, 201, 'new secret: a user token signed with the new secret answers 201')
    or diag($r->{body});
is($t->upstream_count, 1, 'new secret: the request reached the upstream');
my $auth = $t->last_upstream && $t->last_upstream->{headers}{authorization};
is(scalar @{ $auth || [] }, 1, 'new secret: one Authorization upstream');
is_deeply(verify_with($auth->[0], $new_secret), { server => JSON::PP::true },
    'new secret: the server token upstream is signed with the new secret');
is(verify_with($auth->[0], $old_secret), undef,
    'new secret: the server token upstream no longer verifies with the old secret');
is($t->last_upstream->{body}, '{"user_id":"mod-1","target_ids":["u-2"]}',
    'new secret: the body is stamped with the caller');

$t->reset_upstream;
$r = $t->request(POST => '/moderation/mute', token => $old_token,
    json => { target_ids => ['u-2'] });
is($r->{status}, 401, 'new secret: a token signed with the old secret answers 401');
is_deeply($r->{json}, { code => 43, message => 'token signature is invalid', StatusCode => 401,
    duration => '0.00ms', more_info => '', details => [] },
    'new secret: the old-secret token gets code 43');
is_deeply($r->{headers}{'www-authenticate'}, ['Bearer error="invalid_token"'],
    'new secret: WWW-Authenticate on the 401');
is($t->upstream_count, 0, 'new secret: the old-secret token did not reach the upstream');

$t->stop;

for my $s ($old_secret, $new_secret) {
    unlike($t->error_log . $t->access_log, qr/\Q$s\E/, 'no API secret in error.log or access.log');
}

done_testing;
