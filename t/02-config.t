#!/usr/bin/perl

# Configuration (SPEC section 2, docs/directives.md): where each directive
# may appear and what arguments it takes (nginx -t), how the levels inherit
# and override (http, server, location, nested location), what the secret
# file's "first line" means, relative paths, and what the module leaves
# alone where it is not turned on.

use strict;
use warnings;

use Test::More;
use JSON::PP;
use Digest::SHA qw(hmac_sha256);

use lib 't/lib';
use StreamMod::Test qw(mint_jwt b64url b64url_decode);

my $t = StreamMod::Test->new;
my $d = $t->dir;

$t->write_policy({
    rules => [ { effect => 'allow', actions => ['*'], users => ['*'] } ],
});
$t->write_file('deny-all.json', '{"rules":[]}');
$t->write_file('mod2-only.json', JSON::PP->new->encode({
    rules => [ { effect => 'allow', actions => ['*'], users => ['mod-2'] } ] }));

# an http block around $body (server blocks and more), with the preamble
sub http {
    my ($body) = @_;
    return "http {\n" . $t->http_preamble . "\n    upstream stream_api {\n"
      . "        server 127.0.0.1:%%EMU_PORT%%;\n    }\n\n$body\n}\n";
}

# the standard gateway server with extra lines
sub gw {
    my (%o) = @_;
    return $t->default_config(%o);
}

sub passes {
    my ($name, $conf, %o) = @_;
    my ($rc, $out) = $t->nginx_test_config($conf);
    is($rc, 0, "$name: nginx -t passes") or diag($out);
    if ($o{warn}) {
        like($out, qr/\[warn\] $o{warn}/, "$name: warns") or diag($out);
    } else {
        unlike($out, qr/\[(?:warn|emerg|alert)\]/, "$name: no warning") or diag($out);
    }
}

sub fails {
    my ($name, $conf, $re) = @_;
    my ($rc, $out) = $t->nginx_test_config($conf);
    isnt($rc, 0, "$name: nginx -t fails");
    like($out, qr/\[emerg\] $re/, "$name: says why") or diag($out);
}

# ---------------------------------------------------------------------------
# contexts

fails('stream_mod in http', gw(http => 'stream_mod on;'),
    qr/"stream_mod" directive is not allowed here/);
fails('stream_mod in server', gw(server => 'stream_mod on;'),
    qr/"stream_mod" directive is not allowed here/);
fails('stream_mod_status in server', gw(server => 'stream_mod_status;'),
    qr/"stream_mod_status" directive is not allowed here/);
fails('stream_mod_status with an argument',
    gw(server => 'location = /st { stream_mod_status on; }'),
    qr/invalid number of arguments in "stream_mod_status" directive/);
fails('stream_mod_limit_zone in server',
    gw(server => 'stream_mod_limit_zone zone=z:1m rate=1r/s;'),
    qr/"stream_mod_limit_zone" directive is not allowed here/);
fails('stream_mod_limit_zone in a location',
    gw(location => 'stream_mod_limit_zone zone=z:1m rate=1r/s;'),
    qr/"stream_mod_limit_zone" directive is not allowed here/);
fails('stream_mod outside http',
    "stream_mod on;\n" . gw(), qr/"stream_mod" directive is not allowed here/);

for my $dir (qw(stream_mod_api_key stream_mod_api_secret_file stream_mod_identity
    stream_mod_token_secret_file stream_mod_token_leeway stream_mod_policy
    stream_mod_max_body_size stream_mod_limit_dry_run stream_mod_cors_origins)) {
    fails("$dir without an argument", gw(location => "$dir;"),
        qr/invalid number of arguments in "$dir" directive/);
}
fails('stream_mod_api_key with two arguments', gw(location => 'stream_mod_api_key a b;'),
    qr/invalid number of arguments in "stream_mod_api_key" directive/);
fails('stream_mod with two arguments', gw(location => 'stream_mod on off;'),
    qr/invalid number of arguments in "stream_mod" directive/);

# ---------------------------------------------------------------------------
# arguments

fails('stream_mod yes', gw(location => 'stream_mod yes;') =~ s/stream_mod on;\n//gr,
    qr/invalid value "yes" in "stream_mod" directive, it must be "on" or "off"/);
fails('stream_mod_limit_dry_run maybe', gw(location => 'stream_mod_limit_dry_run maybe;'),
    qr/invalid value "maybe" in "stream_mod_limit_dry_run" directive/);
fails('stream_mod_token_leeway abc', gw(http => 'stream_mod_token_leeway abc;'),
    qr/"stream_mod_token_leeway" directive invalid value/);
fails('stream_mod_token_leeway -5s', gw(http => 'stream_mod_token_leeway -5s;'),
    qr/"stream_mod_token_leeway" directive invalid value/);
fails('stream_mod_max_body_size 10x', gw(http => 'stream_mod_max_body_size 10x;'),
    qr/"stream_mod_max_body_size" directive invalid value/);
fails('stream_mod_identity $', gw(http => 'stream_mod_identity $;'),
    qr/invalid value "\$": use "token" or a \$variable/);
fails('stream_mod_identity TOKEN', gw(http => 'stream_mod_identity TOKEN;'),
    qr/invalid value "TOKEN": use "token" or a \$variable/);
fails('stream_mod_identity with an unknown variable',
    gw(http => 'stream_mod_identity $no_such_variable_here;'),
    qr/unknown "no_such_variable_here" variable/);
fails('stream_mod_cors_origins with a bare host',
    gw(http => 'stream_mod_cors_origins app.example.com;'),
    qr/invalid origin "app\.example\.com"/);
fails('stream_mod_cors_origins with ftp://',
    gw(http => 'stream_mod_cors_origins ftp://app.example.com;'),
    qr/invalid origin "ftp:\/\/app\.example\.com"/);
fails('stream_mod_cors_origins with a wildcard',
    gw(http => 'stream_mod_cors_origins *;'), qr/invalid origin "\*"/);

# limit zones
my $Z = 'stream_mod_limit_zone zone=mods:1m rate=10r/s;';
fails('stream_mod_limit_zone zone without a size',
    gw(http => 'stream_mod_limit_zone zone=mods rate=1r/s;'), qr/invalid zone size "zone=mods"/);
fails('stream_mod_limit_zone zone without a name',
    gw(http => 'stream_mod_limit_zone zone=:1m rate=1r/s;'), qr/invalid zone size "zone=:1m"/);
fails('stream_mod_limit_zone zone=mods:lots',
    gw(http => 'stream_mod_limit_zone zone=mods:lots rate=1r/s;'),
    qr/invalid zone size "zone=mods:lots"/);
fails('stream_mod_limit_zone rate=r/s',
    gw(http => 'stream_mod_limit_zone zone=mods:1m rate=r/s;'), qr/invalid rate "rate=r\/s"/);
fails('stream_mod_limit_zone rate=-1r/s',
    gw(http => 'stream_mod_limit_zone zone=mods:1m rate=-1r/s;'), qr/invalid rate "rate=-1r\/s"/);
fails('stream_mod_limit_zone rate=1.5r/s',
    gw(http => 'stream_mod_limit_zone zone=mods:1m rate=1.5r/s;'), qr/invalid rate "rate=1\.5r\/s"/);
fails('stream_mod_limit_zone rate=10', gw(http => 'stream_mod_limit_zone zone=mods:1m rate=10;'),
    qr/invalid rate "rate=10"/);
fails('stream_mod_limit_zone with burst=', gw(http => 'stream_mod_limit_zone zone=mods:1m burst=5;'),
    qr/invalid parameter "burst=5"/);
passes('stream_mod_limit_zone rate=30r/m', gw(http => 'stream_mod_limit_zone zone=mods:1m rate=30r/m;'));
passes('stream_mod_limit_zone rate in r/s, defined but unused',
    gw(http => 'stream_mod_limit_zone zone=mods:32k rate=1000r/s;'));

# limits
fails('stream_mod_limit without zone=', gw(http => $Z, location => 'stream_mod_limit burst=5;'),
    qr/"stream_mod_limit" must have "zone" parameter/);
fails('stream_mod_limit burst=-1', gw(http => $Z, location => 'stream_mod_limit zone=mods burst=-1;'),
    qr/invalid burst value "burst=-1"/);
fails('stream_mod_limit burst=ten', gw(http => $Z, location => 'stream_mod_limit zone=mods burst=ten;'),
    qr/invalid burst value "burst=ten"/);
fails('stream_mod_limit nodelay (implied, not a parameter)',
    gw(http => $Z, location => 'stream_mod_limit zone=mods nodelay;'),
    qr/invalid parameter "nodelay"/);
fails('stream_mod_limit per=user', gw(http => $Z, location => 'stream_mod_limit zone=mods per=user;'),
    qr/invalid parameter "per=user"/);
fails('stream_mod_limit with the same zone twice',
    gw(http => $Z, location => "stream_mod_limit zone=mods;\n            stream_mod_limit zone=mods burst=3;"),
    qr/"stream_mod_limit" directive is duplicate/);
passes('stream_mod_limit: the same zone once per user and once per action',
    gw(http => $Z, location => "stream_mod_limit zone=mods burst=10;\n"
        . "            stream_mod_limit zone=mods burst=2 per=action;"));
passes('stream_mod_limit at http level', gw(http => "$Z\n    stream_mod_limit zone=mods burst=10;"));

# once per level
fails('stream_mod_api_secret_file twice',
    gw(http => 'stream_mod_api_secret_file %%SECRET_FILE%%;'),
    qr/"stream_mod_api_secret_file" directive is duplicate/);
fails('stream_mod_policy twice', gw(http => 'stream_mod_policy %%DIR%%/deny-all.json;'),
    qr/"stream_mod_policy" directive is duplicate/);
fails('stream_mod_identity twice',
    gw(http => "stream_mod_identity token;\n    stream_mod_identity token;"),
    qr/"stream_mod_identity" directive is duplicate/);
fails('stream_mod_cors_origins twice',
    gw(http => "stream_mod_cors_origins https://a.example;\n    stream_mod_cors_origins https://b.example;"),
    qr/"stream_mod_cors_origins" directive is duplicate/);
fails('stream_mod twice', gw(location => 'stream_mod on;'),
    qr/"stream_mod" directive is duplicate/);
passes('stream_mod_token_secret_file several times',
    gw(http => "stream_mod_token_secret_file %%SECRET_FILE%%;\n"
        . "    stream_mod_token_secret_file %%SECRET_FILE%%;"));

# a secret file that is a directory
fails('stream_mod_api_secret_file naming a directory',
    gw() =~ s/%%SECRET_FILE%%/$d/r, qr/.*"\Q$d\E".*Is a directory/);
fails('stream_mod_token_secret_file naming a missing file',
    gw(http => 'stream_mod_token_secret_file %%DIR%%/no-such-key;'),
    qr/open\(\) "\Q$d\E\/no-such-key" failed/);
$t->write_file('empty-key', "\n", 0600);
fails('stream_mod_token_secret_file naming an empty file',
    gw(http => 'stream_mod_token_secret_file %%DIR%%/empty-key;'),
    qr/secret file "\Q$d\E\/empty-key" is empty/);
$t->write_file('world-key', "k\n", 0644);
passes('stream_mod_token_secret_file readable by others',
    gw(http => 'stream_mod_token_secret_file %%DIR%%/world-key;'),
    warn => qr/secret file "\Q$d\E\/world-key" is readable by others/);

# ---------------------------------------------------------------------------
# what stream_mod on needs, at which level

# api key and secret may come from any enclosing level
for my $level (qw(http server location)) {
    my $conf = gw() =~ s/^\s*stream_mod_api_key .*\n//mr =~ s/^\s*stream_mod_api_secret_file .*\n//mr;
    my $lines = "stream_mod_api_key %%API_KEY%%;\n    stream_mod_api_secret_file %%SECRET_FILE%%;";
    if ($level eq 'http') {
        $conf =~ s/(upstream stream_api)/$lines\n\n    $1/;
    } elsif ($level eq 'server') {
        $conf =~ s/(server_name localhost;)/$1\n        $lines/;
    } else {
        $conf =~ s/(stream_mod on;)/$1\n            $lines/g;
    }
    passes("api key and secret at $level level", $conf);
}

# a key given in another location does not count
{
    my $conf = gw() =~ s/^\s*stream_mod_api_key .*\n//mr;
    $conf =~ s/(location \/calls\/ \{)/$1\n            stream_mod_api_key other;/;
    fails('api key only in the other location', $conf,
        qr/"stream_mod" requires "stream_mod_api_key"/);
}

# an empty key is no key
fails('stream_mod_api_key ""', gw() =~ s/stream_mod_api_key %%API_KEY%%;/stream_mod_api_key "";/r,
    qr/"stream_mod" requires "stream_mod_api_key"/);

# proxy_pass in the same location
fails('stream_mod on without proxy_pass', gw() =~ s/proxy_pass http:\/\/stream_api;\n//r,
    qr/"stream_mod" requires "proxy_pass" in the same location/);

# a nested location inherits the gate, but not the content handler
sub nested {
    my ($inner) = @_;
    return gw() =~ s{(location /moderation/ \{\n\s*stream_mod on;\n)}{$1            $inner\n}r;
}
passes('a nested location with its own proxy_pass',
    nested('location /moderation/users/ { proxy_pass http://stream_api; }'));
fails('a nested location inheriting stream_mod on, without proxy_pass',
    nested('location /moderation/users/ { root %%DIR%%; }'),
    qr/"stream_mod" requires "proxy_pass"/);
passes('a nested location with stream_mod off and no proxy_pass',
    nested('location = /moderation/health { stream_mod off; return 200; }'));

# without any stream_mod on, nothing is required
passes('the module loaded, no stream_mod location', http(<<'SRV'));
    server {
        listen 127.0.0.1:%%PORT%%;
        location / {
            proxy_pass http://stream_api;
        }
    }
SRV
passes('stream_mod off alone', http(<<'SRV'));
    server {
        listen 127.0.0.1:%%PORT%%;
        location /moderation/ {
            stream_mod off;
            proxy_pass http://stream_api;
        }
    }
SRV

# the README's minimal configuration (TLS listen and Stream's host name
# replaced: nginx -t resolves upstream hosts and needs certificates)
{
    my $readme = $t->slurp($t->repo . '/README.md');
    my ($block) = $readme =~ /## Minimal configuration\s+```nginx\n(.*?)```/s;
    ok($block, 'README has a minimal configuration');
    if ($block) {
        $block =~ s/^load_module .*\n//m;
        $block =~ s{/etc/nginx/stream/secret}{%%SECRET_FILE%%};
        $block =~ s{/etc/nginx/stream/policy\.json}{%%DIR%%/policy.json};
        $block =~ s/"your-api-key"/%%API_KEY%%/;
        $block =~ s/video\.stream-io-api\.com:443/127.0.0.1:%%EMU_PORT%%/;
        $block =~ s/listen 443 ssl;/listen 127.0.0.1:%%PORT%%;/;
        $block =~ s/^http \{\n/"http {\n" . $t->http_preamble/me;
        passes('the README\'s minimal configuration', $block);
    }
}

# docs/directives.md's example
{
    my $doc = $t->slurp($t->repo . '/docs/directives.md');
    my ($block) = $doc =~ /## Example Configuration\s+```nginx\n(.*?)```/s;
    ok($block, 'docs/directives.md has an example configuration');
    if ($block) {
        $block =~ s/^load_module .*\n//m;
        $block =~ s{/etc/nginx/stream/secret}{%%SECRET_FILE%%};
        $block =~ s{/etc/nginx/stream/policy\.json}{%%DIR%%/policy.json};
        $block =~ s/video\.stream-io-api\.com:443/127.0.0.1:%%EMU_PORT%%/;
        $block =~ s/listen 443 ssl;/listen 127.0.0.1:%%PORT%%;/;
        $block =~ s/^\s*proxy_ssl_trusted_certificate .*\n//mg;
        $block =~ s/^\s*proxy_ssl_verify .*\n//mg;
        $block =~ s/^http \{\n/"http {\n" . $t->http_preamble/me;
        passes('the docs\' example configuration', $block);
    }
}

# ---------------------------------------------------------------------------
# levels at run time: what each location actually uses

$t->write_file('secret-b', "s3cr3t-of-location-b-0123456789\n", 0600);
$t->write_file('secret-crlf', "crlf-secret-0123456789\r\nsecond line\n", 0600);
$t->write_file('secret-spaces', " spaced secret \n", 0600);
$t->write_file('secret-nonl', "no-newline-secret", 0600);
$t->write_file('secret-long', ('L' x 5000) . "\n", 0600);
$t->write_file('secret-relative', $t->api_secret . "\n", 0600);

sub run_conf {
    my ($text) = @_;
    return http(<<"SRV");
    stream_mod_api_key %%API_KEY%%;
    stream_mod_api_secret_file %%SECRET_FILE%%;
    stream_mod_policy %%DIR%%/policy.json;
    stream_mod_max_body_size 256;

$text
SRV
}

$t->write_config(run_conf(<<'SRV'));
    server {
        listen 127.0.0.1:%%PORT%%;
        server_name localhost;

        # inherits everything from http
        location /moderation/ {
            stream_mod on;
            proxy_pass http://stream_api;

            location /moderation/users/ {
                # nested: the gate is inherited
                proxy_pass http://stream_api;
            }

            location = /moderation/health {
                stream_mod off;
                return 200 "healthy\n";
            }
        }

        # everything overridden at location level
        location /calls/ {
            stream_mod on;
            stream_mod_api_key other-key;
            stream_mod_api_secret_file %%DIR%%/secret-b;
            stream_mod_policy %%DIR%%/mod2-only.json;
            stream_mod_max_body_size 32;
            proxy_pass http://stream_api;
        }

        # not a gateway location: the module leaves it alone
        location /plain/ {
            root %%DIR%%;
        }
    }
SRV
$t->run;

my $tok1 = $t->user_token('mod-1');
my $tokb = $t->token({ user_id => 'mod-2' }, secret => 's3cr3t-of-location-b-0123456789');

sub jwt_verifies {
    my ($jwt, $secret) = @_;
    my ($h, $p, $s) = split /\./, $jwt // '', -1;
    return 0 unless defined $s;
    return b64url(hmac_sha256("$h.$p", $secret)) eq $s ? 1 : 0;
}

{
    $t->reset_upstream;
    my $r = $t->request(POST => '/moderation/ban', token => $tok1,
        json => { target_user_id => 'u-2' });
    is($r->{status}, 201, 'http-level settings: ban answers 201') or diag($r->{body});
    my $u = $t->last_upstream;
    is($u->{raw_query}, 'api_key=' . $t->api_key, 'http-level api key upstream');
    ok(jwt_verifies($u->{headers}{authorization}[0], $t->api_secret),
        'http-level secret signs the server token');

    $r = $t->request(POST => '/moderation/ban', token => $tok1,
        json => { target_user_id => 'u-2', reason => 'r' x 300 });
    is($r->{status}, 413, 'http-level stream_mod_max_body_size 256 applies');
    is($r->{json}{code}, 22, 'code 22');

    # nested location: the gate runs there too
    $t->reset_upstream;
    $r = $t->request(POST => '/moderation/users/u-2/deactivate', json => {});
    is($r->{status}, 401, 'nested location: the gate is inherited (no token, 401)');
    is($t->upstream_count, 0, 'nested location: nothing upstream without a token');
    $r = $t->request(POST => '/moderation/users/u-2/deactivate', token => $tok1, json => {});
    is($r->{status}, 201, 'nested location: a valid request passes') or diag($r->{body});
    is($t->last_upstream->{path}, '/api/v2/users/u-2/deactivate', 'nested location: rewritten');

    # stream_mod off in a nested location: NGINX's own handling
    $r = $t->request(GET => '/moderation/health');
    is($r->{status}, 200, 'stream_mod off: the nested location answers itself');
    is($r->{body}, "healthy\n", 'stream_mod off: its own body');
}

{
    $t->reset_upstream;
    my $r = $t->request(POST => '/calls/default/c-1/mark_ended', token => $tok1);
    is($r->{status}, 401, 'location-level secret: a token signed with the http-level secret is refused');
    is($r->{json}{code}, 43, 'code 43');

    $r = $t->request(POST => '/calls/default/c-1/mark_ended',
        token => $t->token({ user_id => 'mod-1' }, secret => 's3cr3t-of-location-b-0123456789'));
    is($r->{status}, 403, 'location-level policy: mod-1 is denied there');
    is($r->{json}{message}, 'denied: no rule allows end_call (default)', 'by the location\'s policy');
    is($t->upstream_count, 0, 'nothing upstream yet');

    $r = $t->request(POST => '/calls/default/c-1/mark_ended', token => $tokb);
    my $u = $t->last_upstream;
    ok($u, 'location-level settings: mod-2 is forwarded') or diag($r->{body});
    is($u && $u->{raw_query}, 'api_key=other-key', 'location-level api key upstream');
    ok($u && jwt_verifies($u->{headers}{authorization}[0], 's3cr3t-of-location-b-0123456789'),
        'location-level secret signs the server token');
    ok($u && !jwt_verifies($u->{headers}{authorization}[0], $t->api_secret),
        'not the http-level secret');

    $t->reset_upstream;
    $r = $t->request(POST => '/calls/default/c-1/kick', token => $tokb,
        json => { user_id => 'u-2', block => JSON::PP::true, pad => 'p' x 10 });
    is($r->{status}, 413, 'location-level stream_mod_max_body_size 32 applies');
    is($t->upstream_count, 0, 'the 413 was not forwarded');
}

{
    # a location without stream_mod: the module changes nothing there
    mkdir "$d/plain";
    $t->write_file('plain/file.txt', "plain\n");
    my $r = $t->request(GET => '/plain/file.txt', token => $tok1);
    is($r->{status}, 200, 'a plain location serves its file');
    is($r->{body}, "plain\n", 'with its body');
    $r = $t->request(GET => '/plain/missing.txt');
    is($r->{status}, 404, 'a plain location\'s 404');
    unlike($r->{headers}{'content-type'}[0] // '', qr/json/, 'is NGINX\'s page, not an APIError');
    ok(!($r->{json} && exists $r->{json}{code}), 'no APIError body');
}

# ---------------------------------------------------------------------------
# the secret file: the first line, without its line end, up to 4096 bytes

sub secret_case {
    my ($file, $secret, $name) = @_;
    my $conf = run_conf(<<"SRV") =~ s/%%SECRET_FILE%%/$file/r;
    server {
        listen 127.0.0.1:%%PORT%%;
        location /moderation/ {
            stream_mod on;
            proxy_pass http://stream_api;
        }
    }
SRV
    ok($t->reload($conf), "reload: $name") or return;
    $t->reset_upstream;
    my $r = $t->request(POST => '/moderation/ban',
        token => $t->token({ user_id => 'mod-1' }, secret => $secret),
        json => { target_user_id => 'u-2' });
    # Stream (the emulator) knows only the test's API secret: whatever it
    # answers, the gate forwarding the request is what counts here
    is($t->upstream_count, 1, "$name: a token signed with it is accepted and forwarded")
        or diag($r->{body});
    my $u = $t->last_upstream;
    ok($u && jwt_verifies($u->{headers}{authorization}[0], $secret),
        "$name: the server token is signed with it");
    return $r;
}

secret_case("$d/secret-crlf", 'crlf-secret-0123456789', '"\r\n" line end, second line ignored');
{
    $t->reset_upstream;
    my $r = $t->request(POST => '/moderation/ban',
        token => $t->token({ user_id => 'mod-1' }, secret => "crlf-secret-0123456789\r"),
        json => { target_user_id => 'u-2' });
    is($r->{status}, 401, '"\r\n" line end: the "\r" is not part of the secret');
    is($t->upstream_count, 0, '"\r\n" line end: refused by the gate');
}
secret_case("$d/secret-spaces", ' spaced secret ', 'spaces are part of the secret');
{
    $t->reset_upstream;
    my $r = $t->request(POST => '/moderation/ban',
        token => $t->token({ user_id => 'mod-1' }, secret => 'spaced secret'),
        json => { target_user_id => 'u-2' });
    is($r->{status}, 401, 'spaces are part of the secret: not trimmed');
    is($t->upstream_count, 0, 'spaces are part of the secret: refused by the gate');
}
secret_case("$d/secret-nonl", 'no-newline-secret', 'a file without a line end');
secret_case("$d/secret-long", 'L' x 4096, 'a 5000-byte line: the first 4096 bytes');
secret_case('secret-relative', $t->api_secret, 'a relative path, from the configuration prefix');

# a relative policy path too
{
    my $conf = run_conf(<<'SRV') =~ s/stream_mod_policy %%DIR%%\/policy\.json;/stream_mod_policy deny-all.json;/r;
    server {
        listen 127.0.0.1:%%PORT%%;
        location /moderation/ {
            stream_mod on;
            proxy_pass http://stream_api;
        }
    }
SRV
    ok($t->reload($conf), 'reload: a relative policy path');
    my $r = $t->request(POST => '/moderation/ban', token => $tok1,
        json => { target_user_id => 'u-2' });
    is($r->{status}, 403, 'the relative policy (deny all) is the one used');
    is($r->{json}{message}, 'denied: no rule allows ban (default)', 'its default deny');
}

# no policy at all: every action denied, said so
{
    my $conf = run_conf(<<'SRV') =~ s/^\s*stream_mod_policy .*\n//mr;
    server {
        listen 127.0.0.1:%%PORT%%;
        location /moderation/ {
            stream_mod on;
            proxy_pass http://stream_api;
        }
    }
SRV
    ok($t->reload($conf), 'reload: no policy');
    $t->reset_upstream;
    my $r = $t->request(POST => '/moderation/ban', token => $tok1,
        json => { target_user_id => 'u-2' });
    is($r->{status}, 403, 'no policy: 403');
    is_deeply($r->{json}, { code => 17, message => 'denied: no policy is configured (default)',
        StatusCode => 403, duration => '0.00ms', more_info => '', details => [] },
        'no policy: the APIError says so');
    is($t->upstream_count, 0, 'no policy: nothing upstream');
}

# two servers, two keys and secrets: nothing leaks between them
{
    my $port2 = StreamMod::Test::_free_port();
    my $conf = http(<<"SRV");
    stream_mod_policy %%DIR%%/policy.json;

    server {
        listen 127.0.0.1:%%PORT%%;
        stream_mod_api_key key-one;
        stream_mod_api_secret_file %%SECRET_FILE%%;
        location /moderation/ {
            stream_mod on;
            proxy_pass http://stream_api;
        }
    }

    server {
        listen 127.0.0.1:$port2;
        stream_mod_api_key key-two;
        stream_mod_api_secret_file %%DIR%%/secret-b;
        location /moderation/ {
            stream_mod on;
            proxy_pass http://stream_api;
        }
    }
SRV
    ok($t->reload($conf), 'reload: two servers with their own key and secret');
    $t->reset_upstream;
    my $r = $t->request(POST => '/moderation/ban', token => $tok1,
        json => { target_user_id => 'u-2' });
    is($t->last_upstream && $t->last_upstream->{raw_query}, 'api_key=key-one',
        'server one: its key');
    $t->reset_upstream;
    $r = $t->request(POST => '/moderation/ban', token => $tok1, port => $port2,
        json => { target_user_id => 'u-2' });
    is($r->{status}, 401, 'server two: server one\'s tokens are refused');
    is($t->upstream_count, 0, 'server two: by the gate');
    $r = $t->request(POST => '/moderation/ban', token => $tokb, port => $port2,
        json => { target_user_id => 'u-2' });
    my $u = $t->last_upstream;
    is($u && $u->{raw_query}, 'api_key=key-two', 'server two: its key');
    ok($u && jwt_verifies($u->{headers}{authorization}[0], 's3cr3t-of-location-b-0123456789'),
        'server two: its secret');
}

$t->stop;

# the secrets never reach a log
for my $s ($t->api_secret, 's3cr3t-of-location-b-0123456789', 'crlf-secret-0123456789') {
    unlike($t->error_log . $t->access_log, qr/\Q$s\E/, "secret \"$s\" is in no log");
}

done_testing;
