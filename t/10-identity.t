#!/usr/bin/perl

# Identity (SPEC section 3): the user token in Authorization (raw or
# "Bearer"), HS256 only, constant-time signature, user_id required, time
# claims with leeway, app keys (stream_mod_token_secret_file) and their
# rotation, and the trusted-variable mode (stream_mod_identity $var), with
# the auth_request pattern from docs/directives.md.
#
# Every refusal is a 401 APIError with WWW-Authenticate, and an unverified
# request reaches neither the policy, the rate limits nor the upstream.

use strict;
use warnings;

use Test::More;
use JSON::PP;
use Time::HiRes qw(sleep);
use Digest::SHA qw(hmac_sha256);

use lib 't/lib';
use StreamMod::Test qw(mint_jwt b64url b64url_decode);

my $t = StreamMod::Test->new;
my $SECRET = $t->api_secret;
my $HS256 = { alg => 'HS256', typ => 'JWT' };
my $BAN = '{"target_user_id":"u-2"}';

$t->write_policy({
    rules => [ { effect => 'allow', actions => ['*'], users => ['*'] } ],
});

$t->write_file('app-key-1', "app-key-one-0123456789\n", 0600);
$t->write_file('app-key-2', "app-key-two-9876543210\n", 0600);

# the gateway config with extra lines at each level; the audit log records
# what the module decided and what is left of $http_authorization
sub conf {
    my (%o) = @_;
    my $http = join "\n", map { "    $_" } @{ $o{http} || [] };
    my $srv  = join "\n", map { "        $_" } @{ $o{server} || [] };
    my $mod  = join "\n", map { "            $_" } @{ $o{moderation} || [] };
    my $calls = join "\n", map { "            $_" } @{ $o{calls} || [] };
    my $extra = $o{locations} // '';
    return <<"CONF";
http {
@{[ $t->http_preamble ]}
    log_format audit '\$stream_mod_user|\$stream_mod_action|\$stream_mod_decision|'
                     '\$stream_mod_reason|auth=[\$http_authorization]|\$request_uri';

    stream_mod_api_key %%API_KEY%%;
    stream_mod_api_secret_file %%SECRET_FILE%%;
    stream_mod_policy %%DIR%%/policy.json;
$http

    upstream stream_api {
        server 127.0.0.1:%%EMU_PORT%%;
    }

    server {
        listen 127.0.0.1:%%PORT%%;
        server_name localhost;
        access_log %%DIR%%/audit.log audit;
$srv

        location /moderation/ {
            stream_mod on;
$mod
            proxy_pass http://stream_api;
        }

        location /calls/ {
            stream_mod on;
$calls
            proxy_pass http://stream_api;
        }
$extra
    }
}
CONF
}

sub reload_ok {
    my ($text, $name) = @_;
    ok($t->reload($text), "reload: $name") or diag($t->error_log);
}

# a ban with this exact Authorization header value (undef: no header)
sub ban_with {
    my ($auth, %o) = @_;
    my @h = ('Content-Type' => 'application/json');
    push @h, Authorization => $auth if defined $auth;
    push @h, @{ $o{headers} || [] };
    my $path = '/moderation/ban' . (defined $o{audit} ? "?audit=$o{audit}" : '');
    return $t->request(POST => $path, body => $o{body} // $BAN, headers => \@h);
}

sub audit_lines {
    open my $fh, '<', $t->dir . '/audit.log' or return ();
    # complete lines only: a line being written may be read half-way
    my @l = grep { length } map { s/\n\z//r } grep { /\n\z/ } <$fh>;
    return @l;
}

# the audit line of the request sent to "...?audit=$id", without its URI
# (access_log is written just after the response, so wait for it; the
# query is not defined for these actions, so the gate drops it)
sub audit_line {
    my ($id) = @_;
    for (1 .. 250) {
        my ($l) = grep { /\?audit=\Q$id\E\z/ } audit_lines();
        return $l =~ s/\|[^|]*\?audit=\Q$id\E\z//r if defined $l;
        sleep 0.02;
    }
    return '';
}

sub is_refused {
    my ($r, $status, $code, $msg, $name) = @_;
    subtest $name => sub {
        is($r->{status}, $status, "status $status")
            or diag($r->{raw} // $r->{error});
        ok($r->{json}, 'APIError JSON body') or return;
        is($r->{json}{code}, $code, "code $code");
        is($r->{json}{StatusCode}, $status, 'StatusCode');
        if (ref $msg eq 'Regexp') {
            like($r->{json}{message}, $msg, 'message');
        } elsif (defined $msg) {
            is($r->{json}{message}, $msg, 'message');
        }
        like($r->{headers}{'content-type'}[0] // '', qr{\Aapplication/json},
            'Content-Type: application/json');
        if ($status == 401) {
            is_deeply($r->{headers}{'www-authenticate'},
                ['Bearer error="invalid_token"'],
                'WWW-Authenticate: Bearer error="invalid_token"');
        }
    };
}

# a 401 that reached nothing upstream
sub unauthorized {
    my ($auth, $code, $msg, $name, %o) = @_;
    $t->reset_upstream;
    my $r = ban_with($auth, %o);
    is_refused($r, 401, $code, $msg, $name);
    is($t->upstream_count, 0, "$name: nothing reached the upstream");
    return $r;
}

sub accepted {
    my ($auth, $user, $name, %o) = @_;
    $t->reset_upstream;
    my $r = ban_with($auth, %o);
    is($r->{status}, 201, "$name: accepted") or diag($r->{body});
    my $u = $t->last_upstream;
    like($u ? $u->{body} : '', qr/\A\{"banned_by_id":"\Q$user\E",/,
        "$name: stamped with $user");
    return $r;
}

my $MALFORMED = 'malformed user token';
my $BADSIG    = 'token signature is invalid';
my $HS256ONLY = 'only HS256 tokens are accepted';

# ---------------------------------------------------------------------------
# the default: stream_mod_identity token, verified with the API secret

$t->write_config(conf())->run;

my $good = $t->user_token('mod-1');

{
    accepted($good, 'mod-1', 'raw token, as Stream SDKs send it',
        audit => 'a1');
    my $line = audit_line('a1');
    my $u = $t->last_upstream;
    is_deeply($t->verify_server_token($u->{headers}{authorization}[0]),
        { server => JSON::PP::true }, 'the upstream gets the server token');
    unlike(JSON::PP->new->canonical->encode($u), qr/\Q$good\E/,
        'the user token is nowhere in the upstream request');
    like($line, qr/\Amod-1\|ban\|allow\|/, 'audit: user, action, allow');
    like($line, qr/auth=\[\]\z/, 'audit: $http_authorization is emptied');
}

accepted("Bearer $good", 'mod-1', '"Bearer <jwt>"');
accepted("bearer $good", 'mod-1', 'auth scheme is case-insensitive (bearer)');
accepted("BEARER $good", 'mod-1', 'auth scheme is case-insensitive (BEARER)');
accepted($t->user_token('a@b_c-D9'), 'a@b_c-D9', 'user id with @ _ - and digits');
accepted($t->user_token('x' x 255), 'x' x 255, 'a 255-byte user_id');
accepted($t->token({ user_id => 'mod-1' }), 'mod-1', 'no time claims at all');
accepted($t->token({ user_id => 'mod-1', exp => time + 3600.5, iat => time - 0.5 }),
    'mod-1', 'fractional exp and iat');
accepted($t->token({ user_id => 'mod-1', role => 'admin', call_cids => ['default:c-1'],
        name => 'Mod', custom => { a => [1, 2] } }), 'mod-1', 'other claims are ignored');
accepted($t->token({ user_id => 'mod-1' }, header => { alg => 'HS256' }), 'mod-1',
    'header without typ');
accepted($t->token({ user_id => 'mod-1' }, header => { alg => 'HS256', typ => 'JWT', kid => 'k1' }),
    'mod-1', 'header with kid');

# --- missing and malformed -------------------------------------------------

{
    my $r = unauthorized(undef, 5, 'missing user token', 'no Authorization header',
        audit => 'a2');
    my $line = audit_line('a2');
    is_deeply([ sort keys %{ $r->{json} } ],
        [qw(StatusCode code details duration message more_info)],
        'the 401 has exactly the APIError fields');
    is($r->{json}{duration}, '0.00ms', 'duration');
    is($r->{json}{more_info}, '', 'more_info');
    is_deeply($r->{json}{details}, [], 'details');
    like($line, qr/\A-?\|ban\|reject\|missing user token\|/,
        'audit: no user, decision reject, reason');
}

unauthorized('', 5, qr/\A(?:missing|malformed) user token\z/, 'empty Authorization');
unauthorized('Bearer', 5, $MALFORMED, '"Bearer" alone');
unauthorized('Bearer ', 5, qr/\A(?:missing|malformed) user token\z/, '"Bearer " alone');
unauthorized("Basic " . b64url("mod-1:pw"), 5, $MALFORMED, 'Basic credentials');
unauthorized("Token $good", 5, $MALFORMED, 'another auth scheme');
unauthorized("Bearer Bearer $good", 5, $MALFORMED, '"Bearer" twice');

{
    my ($h, $p, $s) = split /\./, $good;
    unauthorized("$h.$p", 5, $MALFORMED, 'two segments');
    unauthorized("$h.$p.$s.$s", 5, $MALFORMED, 'four segments');
    unauthorized("$h.$p.", 5, $MALFORMED, 'empty signature');
    unauthorized(".$p.$s", 5, $MALFORMED, 'empty header segment');
    unauthorized("$h..$s", 5, $MALFORMED, 'empty payload segment');
    unauthorized("$h.$p.$s=", 5, $MALFORMED, 'base64 padding');
    unauthorized("$h.$p.${s}==", 5, $MALFORMED, 'base64 padding (two)');
    # a token with "-" or "_" in it, written in the standard alphabet
    my ($url) = grep { /[-_]/ } map { $t->user_token("std-$_") } 1 .. 200;
    (my $std = $url) =~ tr{-_}{+/};
    unauthorized($std, 5, $MALFORMED, 'standard base64 alphabet ("+" and "/")');
    unauthorized("$h.$p.$s,", 5, $MALFORMED, 'a stray comma');
    unauthorized("$h. $p.$s", 5, $MALFORMED, 'a space inside');
    unauthorized('a.b.c', 5, $MALFORMED, 'segments that are not JSON');
}

# header segment problems: refused before the signature is looked at
unauthorized(mint_jwt($SECRET, 'not json', '{"user_id":"mod-1"}'), 5, $MALFORMED,
    'header is not JSON');
unauthorized(mint_jwt($SECRET, '["HS256"]', '{"user_id":"mod-1"}'), 5, $MALFORMED,
    'header is a JSON array');
unauthorized(mint_jwt($SECRET, '{"alg":"HS256","alg":"none"}', '{"user_id":"mod-1"}'), 5,
    $MALFORMED, 'header with a duplicate alg');
unauthorized(mint_jwt($SECRET, '{"alg":"HS256"} x', '{"user_id":"mod-1"}'), 5, $MALFORMED,
    'header with data after the object');

# a token over 4096 bytes (NGINX's header buffers take it; the gate does not)
{
    my $big = $t->token({ user_id => 'mod-1', pad => 'p' x 4000 });
    cmp_ok(length $big, '>', 4096, 'the padded token is over 4096 bytes');
    unauthorized($big, 5, $MALFORMED, 'token over 4096 bytes');
    my $fit = $t->token({ user_id => 'mod-1', pad => 'p' x 2900 });
    cmp_ok(length $fit, '<=', 4096, 'a padded token under 4096 bytes');
    accepted($fit, 'mod-1', 'a large token within 4096 bytes');
}

# --- alg -------------------------------------------------------------------

unauthorized($t->token({ user_id => 'mod-1' }, header => { alg => 'none' }, signature => 'x'),
    5, $HS256ONLY, 'alg none');
unauthorized($t->token({ user_id => 'mod-1' }, header => { alg => 'none' }), 5,
    qr/\A(?:malformed user token|only HS256 tokens are accepted)\z/, 'alg none, no signature');
unauthorized($t->token({ user_id => 'mod-1' }, header => { alg => 'HS512' }), 5, $HS256ONLY,
    'alg HS512');
unauthorized($t->token({ user_id => 'mod-1' }, header => { alg => 'RS256' }), 5, $HS256ONLY,
    'alg RS256');
unauthorized($t->token({ user_id => 'mod-1' }, header => { alg => 'hs256' }), 5, $HS256ONLY,
    'alg hs256 (case matters)');
unauthorized($t->token({ user_id => 'mod-1' }, header => { alg => 'HS256 ' }), 5, $HS256ONLY,
    'alg "HS256 "');
unauthorized($t->token({ user_id => 'mod-1' }, header => { typ => 'JWT' }), 5, $HS256ONLY,
    'no alg');
unauthorized(mint_jwt($SECRET, '{"alg":256}', '{"user_id":"mod-1"}'), 5, $HS256ONLY,
    'alg is a number');
unauthorized(mint_jwt($SECRET, '{"alg":["HS256"]}', '{"user_id":"mod-1"}'), 5, $HS256ONLY,
    'alg is an array');
unauthorized($t->token({ user_id => 'mod-1' }, header => { alg => 'HS256', crit => ['exp'] }),
    5, $HS256ONLY, 'a crit header');

# --- signature ---------------------------------------------------------------

{
    unauthorized($t->user_token('mod-1', exp => time + 3600) =~ s/[^.]+\z/'A' x 43/er, 43,
        $BADSIG, 'a wrong signature of the right length');
    unauthorized($t->token({ user_id => 'mod-1' }, secret => 'not-the-secret'), 43, $BADSIG,
        'signed with another key');
    unauthorized($t->token({ user_id => 'mod-1' }, secret => "$SECRET\n"), 43, $BADSIG,
        'signed with the secret plus its line end');
    unauthorized($t->token({ user_id => 'mod-1' }, secret => ''), 43, $BADSIG,
        'signed with an empty key');

    my ($h, $p, $s) = split /\./, $good;
    unauthorized("$h.$p." . substr($s, 0, 42), 43, $BADSIG, 'signature one character short');
    unauthorized("$h.$p.${s}A", 43, $BADSIG, 'signature one character long');
    unauthorized("$h.$p.$s$s", 43, $BADSIG, 'signature doubled');
    unauthorized("$h.$p." . substr($s, 0, 42) . ($s =~ /a\z/ ? 'b' : 'a'), 43, $BADSIG,
        'last signature character changed');

    # the last of 43 base64url characters carries 4 bits of the MAC and
    # 2 padding bits: flipping a padding bit keeps the decoded bytes, but
    # only the canonical text verifies
    my $abc = join '', 'A' .. 'Z', 'a' .. 'z', 0 .. 9, '-', '_';
    my $last = substr($s, -1);
    my $i = index($abc, $last);
    my $alias = substr($s, 0, 42) . substr($abc, $i ^ 1, 1);
    is(b64url_decode($alias), b64url_decode($s), 'the aliased signature decodes to the same MAC');
    unauthorized("$h.$p.$alias", 43, $BADSIG, 'non-canonical encoding of the right MAC');

    # a payload swapped under a valid signature
    my (undef, $p2) = split /\./, $t->user_token('admin');
    unauthorized("$h.$p2.$s", 43, $BADSIG, 'payload of another token under this signature');

    # the signature is checked before the claims: forged claims tell nothing
    unauthorized($t->token({ user_id => 'mod-1', exp => time - 3600 }, secret => 'x'), 43,
        $BADSIG, 'forged expired token: 43, not 40');
    unauthorized($t->token({ user_id => 'mod-1', nbf => time + 3600 }, secret => 'x'), 43,
        $BADSIG, 'forged not-yet-valid token: 43, not 41');
    unauthorized($t->token({ server => JSON::PP::true }, secret => 'x'), 43, $BADSIG,
        'forged server token: 43');
    unauthorized(mint_jwt('x', $HS256, 'not json'), 43, $BADSIG,
        'forged token with a broken payload: 43');
}

# --- claims ------------------------------------------------------------------

unauthorized($t->server_token, 5, 'token has no user_id; server tokens are not accepted',
    'the server token itself');
unauthorized($t->token({ exp => time + 3600 }), 5,
    'token has no user_id; server tokens are not accepted', 'no user_id');
unauthorized(mint_jwt($SECRET, $HS256, '{"user_id":null}'), 5, 'invalid user_id claim',
    'user_id null');
unauthorized(mint_jwt($SECRET, $HS256, '{"user_id":42}'), 5, 'invalid user_id claim',
    'user_id a number');
unauthorized(mint_jwt($SECRET, $HS256, '{"user_id":["mod-1"]}'), 5, 'invalid user_id claim',
    'user_id an array');
unauthorized(mint_jwt($SECRET, $HS256, '{"user_id":true}'), 5, 'invalid user_id claim',
    'user_id a boolean');
unauthorized($t->token({ user_id => '' }), 5, 'invalid user_id claim', 'user_id empty');
unauthorized($t->token({ user_id => 'x' x 256 }), 5, 'invalid user_id claim',
    'user_id of 256 bytes');
for my $bad ('mod 1', 'mod/1', 'mod.1', 'mod"1', 'mod,1', "mod\n1", "mod\x{e9}", 'a:b', '*') {
    (my $show = $bad) =~ s/([^ -~])/sprintf '\\x%02x', ord $1/ge;
    unauthorized($t->token({ user_id => $bad }), 5, 'invalid user_id claim',
        "user_id \"$show\"");
}
unauthorized(mint_jwt($SECRET, $HS256, '{"user_id":"mod-1\u0000"}'), 5,
    qr/\A(?:invalid user_id claim|malformed user token)\z/, 'user_id with a NUL escape');

# duplicate claims: one value checked, another acted on; refused
unauthorized(mint_jwt($SECRET, $HS256, '{"user_id":"mod-1","user_id":"admin"}'), 5,
    $MALFORMED, 'user_id twice');
unauthorized(mint_jwt($SECRET, $HS256, '{"user_id":"mod-1","exp":1,"exp":99999999999}'), 5,
    $MALFORMED, 'exp twice');
unauthorized(mint_jwt($SECRET, $HS256, '["mod-1"]'), 5, $MALFORMED, 'payload is an array');
unauthorized(mint_jwt($SECRET, $HS256, '"mod-1"'), 5, $MALFORMED, 'payload is a string');
unauthorized(mint_jwt($SECRET, $HS256, '{"user_id":"mod-1"'), 5, $MALFORMED,
    'payload is truncated JSON');
unauthorized(mint_jwt($SECRET, $HS256, '{"user_id":"mod-1"}{}'), 5, $MALFORMED,
    'payload with data after the object');

# --- time claims, default leeway 5s --------------------------------------------

{
    my $now = time;
    unauthorized($t->user_token('mod-1', exp => $now - 60), 40, 'token has expired',
        'exp a minute ago');
    unauthorized($t->user_token('mod-1', iat => $now - 7200, exp => $now - 3600), 40,
        'token has expired', 'exp an hour ago');
    accepted($t->user_token('mod-1', exp => $now - 1), 'mod-1', 'exp 1s ago: within the leeway');
    unauthorized($t->user_token('mod-1', nbf => $now + 60), 41, 'token is not valid yet',
        'nbf in a minute');
    accepted($t->user_token('mod-1', nbf => $now + 1), 'mod-1', 'nbf in 1s: within the leeway');
    accepted($t->user_token('mod-1', nbf => $now - 60), 'mod-1', 'nbf in the past');
    unauthorized($t->user_token('mod-1', iat => $now + 60), 42,
        'token used before issued at (iat)', 'iat in a minute');
    accepted($t->user_token('mod-1', iat => $now + 1), 'mod-1', 'iat in 1s: within the leeway');
    accepted($t->user_token('mod-1', iat => 0, exp => undef), 'mod-1', 'iat 0');

    unauthorized(mint_jwt($SECRET, $HS256, '{"user_id":"mod-1","exp":"9999999999"}'), 5,
        $MALFORMED, 'exp as a string');
    unauthorized(mint_jwt($SECRET, $HS256, '{"user_id":"mod-1","nbf":null}'), 5, $MALFORMED,
        'nbf null');
    unauthorized(mint_jwt($SECRET, $HS256, '{"user_id":"mod-1","iat":true}'), 5, $MALFORMED,
        'iat a boolean');
    unauthorized(mint_jwt($SECRET, $HS256, '{"user_id":"mod-1","exp":[9999999999]}'), 5,
        $MALFORMED, 'exp an array');

    # several failures: the order is exp, nbf, iat
    unauthorized($t->user_token('mod-1', exp => $now - 60, nbf => $now + 60, iat => $now + 60),
        40, 'token has expired', 'expired and not yet valid: exp first');
    unauthorized($t->user_token('mod-1', nbf => $now + 60, iat => $now + 60), 41,
        'token is not valid yet', 'nbf before iat');
}

# two Authorization headers: NGINX itself refuses (duplicate header line)
{
    $t->reset_upstream;
    my $r = $t->request(POST => '/moderation/ban', body => $BAN,
        headers => [ 'Content-Type' => 'application/json', Authorization => $good,
            Authorization => $t->user_token('admin') ]);
    ok(defined $r->{status} && $r->{status} >= 400, 'two Authorization headers are refused')
        or diag($r->{raw});
    is($t->upstream_count, 0, 'two Authorization headers: nothing upstream');
}

# the token does not leak into the error log (at the harness level, notice)
unlike($t->error_log, qr/\Q$good\E/, 'the user token is not in error.log');

# request_permission: Stream sees the caller's token itself, without "Bearer "
{
    $t->reset_upstream;
    my $r = $t->request(POST => '/calls/default/c-1/request_permission',
        headers => [ Authorization => "Bearer $good", 'Content-Type' => 'application/json' ],
        body => '{"permissions":["send-audio"]}');
    is($r->{status}, 201, 'request_permission with "Bearer <jwt>"') or diag($r->{body});
    my $u = $t->last_upstream;
    is_deeply($u->{headers}{authorization}, [$good],
        'request_permission: the bare token goes upstream');
    is($u->{auth}{kind}, 'user', 'request_permission: Stream verifies it as a user token');
    is_deeply($u->{auth}{payload}{user_id}, 'mod-1', 'request_permission: as mod-1');
}

# ---------------------------------------------------------------------------
# stream_mod_token_leeway

reload_ok(conf(http => ['stream_mod_token_leeway 0;']), 'stream_mod_token_leeway 0');
{
    my $now = time;
    unauthorized($t->user_token('mod-1', exp => $now - 2), 40, 'token has expired',
        'leeway 0: exp 2s ago');
    unauthorized($t->user_token('mod-1', nbf => $now + 3), 41, 'token is not valid yet',
        'leeway 0: nbf in 3s');
    unauthorized($t->user_token('mod-1', iat => $now + 3), 42,
        'token used before issued at (iat)', 'leeway 0: iat in 3s');
    accepted($t->user_token('mod-1', exp => $now + 60), 'mod-1', 'leeway 0: valid token');
}

reload_ok(conf(http => ['stream_mod_token_leeway 2m;']), 'stream_mod_token_leeway 2m');
{
    my $now = time;
    accepted($t->user_token('mod-1', exp => $now - 90), 'mod-1', 'leeway 2m: exp 90s ago');
    accepted($t->user_token('mod-1', nbf => $now + 90), 'mod-1', 'leeway 2m: nbf in 90s');
    accepted($t->user_token('mod-1', iat => $now + 90), 'mod-1', 'leeway 2m: iat in 90s');
    unauthorized($t->user_token('mod-1', exp => $now - 300), 40, 'token has expired',
        'leeway 2m: exp 5 minutes ago');
}

# location level beats http level
reload_ok(conf(http => ['stream_mod_token_leeway 2m;'], calls => ['stream_mod_token_leeway 0;']),
    'leeway 2m in http, 0 in /calls/');
{
    my $tok = $t->user_token('mod-1', exp => time - 30);
    accepted($tok, 'mod-1', 'leeway inherited by /moderation/');
    $t->reset_upstream;
    my $r = $t->request(POST => '/calls/default/c-1/mark_ended', token => $tok);
    is_refused($r, 401, 40, 'token has expired', '/calls/ overrides the leeway');
    is($t->upstream_count, 0, '/calls/: nothing upstream');
}

# ---------------------------------------------------------------------------
# stream_mod_token_secret_file: app keys instead of the API secret

my $APP1 = 'app-key-one-0123456789';
my $APP2 = 'app-key-two-9876543210';

reload_ok(conf(http => ["stream_mod_token_secret_file %%DIR%%/app-key-1;"]), 'one app key');
{
    accepted($t->token({ user_id => 'mod-1' }, secret => $APP1), 'mod-1',
        'app key 1: token accepted');
    my $u = $t->last_upstream;
    is_deeply($t->verify_server_token($u->{headers}{authorization}[0]),
        { server => JSON::PP::true }, 'app key: upstream still gets the API server token');
    unauthorized($good, 43, $BADSIG, 'app key only: API-secret tokens are no longer accepted');
    unauthorized($t->token({ user_id => 'mod-1' }, secret => $APP2), 43, $BADSIG,
        'app key 2 is not configured yet');

    # request_permission needs a token Stream accepts: the API secret's
    $t->reset_upstream;
    my $r = $t->request(POST => '/calls/default/c-1/request_permission',
        token => $t->token({ user_id => 'mod-1' }, secret => $APP1),
        json => { permissions => ['send-audio'] });
    is_refused($r, 403, 17, 'request_permission runs as the caller: it needs a user token '
        . 'signed with the API secret', 'request_permission with an app-key token');
    is($t->upstream_count, 0, 'request_permission with an app key: nothing upstream');
}

# rotation without downtime: add the new key, then drop the old one
reload_ok(conf(http => [ "stream_mod_token_secret_file %%DIR%%/app-key-2;",
        "stream_mod_token_secret_file %%DIR%%/app-key-1;" ]), 'two app keys');
accepted($t->token({ user_id => 'mod-1' }, secret => $APP1), 'mod-1', 'two keys: key 1');
accepted($t->token({ user_id => 'mod-2' }, secret => $APP2), 'mod-2', 'two keys: key 2');
unauthorized($good, 43, $BADSIG, 'two keys: the API secret still not among them');
unauthorized($t->token({ user_id => 'mod-1' }, secret => 'x'), 43, $BADSIG,
    'two keys: another key');

reload_ok(conf(http => ["stream_mod_token_secret_file %%DIR%%/app-key-2;"]),
    'old key removed');
unauthorized($t->token({ user_id => 'mod-1' }, secret => $APP1), 43, $BADSIG,
    'after rotation: the old key is refused');
accepted($t->token({ user_id => 'mod-2' }, secret => $APP2), 'mod-2',
    'after rotation: the new key works');

# the API secret listed among the keys: request_permission works again
reload_ok(conf(http => [ "stream_mod_token_secret_file %%DIR%%/app-key-2;",
        "stream_mod_token_secret_file %%SECRET_FILE%%;" ]), 'app key and API secret');
{
    accepted($good, 'mod-1', 'API secret listed: its tokens are accepted');
    accepted($t->token({ user_id => 'mod-2' }, secret => $APP2), 'mod-2',
        'API secret listed: app key still accepted');
    $t->reset_upstream;
    my $r = $t->request(POST => '/calls/default/c-1/request_permission', token => $good,
        json => { permissions => ['send-video'] });
    is($r->{status}, 201, 'API secret listed: request_permission with its token')
        or diag($r->{body});
    $r = $t->request(POST => '/calls/default/c-1/request_permission',
        token => $t->token({ user_id => 'mod-2' }, secret => $APP2),
        json => { permissions => ['send-video'] });
    is($r->{status}, 403, 'API secret listed: request_permission with the app key still 403');
}

# a location's own list replaces the inherited one
reload_ok(conf(http => ["stream_mod_token_secret_file %%DIR%%/app-key-1;"],
        calls => ["stream_mod_token_secret_file %%DIR%%/app-key-2;"]),
    'key 1 in http, key 2 in /calls/');
{
    my $k1 = $t->token({ user_id => 'mod-1' }, secret => $APP1);
    my $k2 = $t->token({ user_id => 'mod-1' }, secret => $APP2);
    accepted($k1, 'mod-1', '/moderation/ inherits key 1');
    unauthorized($k2, 43, $BADSIG, '/moderation/ does not take key 2');
    my $r = $t->request(POST => '/calls/default/c-1/mark_ended', token => $k2);
    is($r->{status}, 201, '/calls/ takes key 2') or diag($r->{body});
    $r = $t->request(POST => '/calls/default/c-1/mark_ended', token => $k1);
    is_refused($r, 401, 43, $BADSIG, '/calls/ does not take the inherited key 1');
}

# ---------------------------------------------------------------------------
# unverified requests spend nobody's allowance

reload_ok(conf(
        http  => ['stream_mod_limit_zone zone=ids:1m rate=1r/m;'],
        calls => ['stream_mod_limit zone=ids;'],
    ), 'a limit of 1 request per minute on /calls/');
{
    $t->reset_upstream;
    for my $forged (
        $t->token({ user_id => 'lim-1' }, secret => 'attacker'),
        $t->user_token('lim-1', exp => time - 3600),
        $t->token({ user_id => 'lim-1' }, header => { alg => 'none' }, signature => 'x'),
        "garbage",
    ) {
        my $r = $t->request(POST => '/calls/default/c-1/mark_ended', token => $forged);
        is($r->{status}, 401, 'a refused token for lim-1');
    }
    my $r = $t->request(POST => '/calls/default/c-1/mark_ended',
        token => $t->user_token('lim-1'));
    is($r->{status}, 201, 'lim-1 still has its allowance after forged attempts')
        or diag($r->{body});
    $r = $t->request(POST => '/calls/default/c-1/mark_ended', token => $t->user_token('lim-1'));
    is($r->{status}, 429, 'and the limit is live: the next one is 429');
    is($t->upstream_count, 1, 'only the verified request reached the upstream');
}

# ---------------------------------------------------------------------------
# stream_mod_identity $variable: a trusted layer in front names the caller

reload_ok(conf(moderation => ['stream_mod_identity $http_x_moderator;'],
        calls => ['stream_mod_identity $http_x_moderator;']), 'identity from a variable');
{
    $t->reset_upstream;
    my $r = $t->request(POST => '/moderation/ban?audit=a3', json => { target_user_id => 'u-2' },
        headers => [ 'X-Moderator' => 'mod-7' ]);
    my $line = audit_line('a3');
    is($r->{status}, 201, 'variable identity: accepted') or diag($r->{body});
    my $u = $t->last_upstream;
    is($u->{body}, '{"banned_by_id":"mod-7","target_user_id":"u-2"}',
        'variable identity: stamped with the variable\'s value');
    is_deeply($t->verify_server_token($u->{headers}{authorization}[0]),
        { server => JSON::PP::true }, 'variable identity: server token upstream');
    like($line, qr/\Amod-7\|ban\|allow\|/, 'variable identity: audit user');

    my $tok = $t->user_token('mod-1');
    $r = $t->request(POST => '/moderation/ban', json => { target_user_id => 'u-2' },
        headers => [ 'X-Moderator' => 'mod-7', Authorization => $tok ]);
    is($r->{status}, 201, 'variable identity: an Authorization header is ignored');
    $u = $t->last_upstream;
    like($u->{body}, qr/"banned_by_id":"mod-7"/, 'variable identity: the variable wins');
    isnt($u->{headers}{authorization}[0], $tok, 'variable identity: the client token is not forwarded');

    unauthorized(undef, 5, 'unauthenticated', 'variable identity: variable not set');
    unauthorized($tok, 5, 'unauthenticated',
        'variable identity: a valid token alone is not enough');
    unauthorized(undef, 5, 'unauthenticated', 'variable identity: empty value',
        headers => [ 'X-Moderator' => '' ]);
    unauthorized(undef, 5, 'invalid user id', 'variable identity: a space',
        headers => [ 'X-Moderator' => 'mod 7' ]);
    unauthorized(undef, 5, 'invalid user id', 'variable identity: a slash',
        headers => [ 'X-Moderator' => 'mod/7' ]);
    unauthorized(undef, 5, 'invalid user id', 'variable identity: 256 bytes',
        headers => [ 'X-Moderator' => 'm' x 256 ]);
    accepted(undef, 'm' x 255, 'variable identity: 255 bytes',
        headers => [ 'X-Moderator' => 'm' x 255 ]);

    # request_permission cannot run as the caller without a token Stream accepts
    $t->reset_upstream;
    $r = $t->request(POST => '/calls/default/c-1/request_permission',
        json => { permissions => ['send-audio'] },
        headers => [ 'X-Moderator' => 'mod-1', Authorization => $tok ]);
    is_refused($r, 403, 17, qr/request_permission runs as the caller/,
        'variable identity: request_permission is refused');
    is($t->upstream_count, 0, 'variable identity: request_permission not forwarded');
}

# set by a map: the value NGINX computes is what counts
reload_ok(conf(
        http => [ 'map $http_x_session $moderator {',
                  '    default "";',
                  '    s3ss10n-one mod-1;',
                  '    s3ss10n-two "bad id";',
                  '}' ],
        moderation => ['stream_mod_identity $moderator;'],
    ), 'identity from a map');
accepted(undef, 'mod-1', 'map: known session', headers => [ 'X-Session' => 's3ss10n-one' ]);
unauthorized(undef, 5, 'unauthenticated', 'map: unknown session',
    headers => [ 'X-Session' => 'other' ]);
unauthorized(undef, 5, 'invalid user id', 'map: an invalid id from the map',
    headers => [ 'X-Session' => 's3ss10n-two' ]);

# the auth_request pattern of docs/directives.md, with the auth backend on
# this same server
reload_ok(conf(
        moderation => [ 'auth_request /_auth;',
                        'auth_request_set $moderator $upstream_http_x_user_id;',
                        'stream_mod_identity $moderator;' ],
        locations => <<'LOC',
        location = /_auth {
            internal;
            proxy_pass http://127.0.0.1:%%PORT%%/_check;
            proxy_pass_request_body off;
            proxy_set_header Content-Length "";
            proxy_set_header X-Original-URI $request_uri;
        }

        location = /_check {
            if ($http_x_session = "") {
                return 401;
            }
            if ($http_x_session = "s3ss10n-one") {
                add_header X-User-Id mod-1;
                return 204;
            }
            if ($http_x_session = "s3ss10n-empty") {
                return 204;
            }
            return 403;
        }
LOC
    ), 'auth_request in front');
{
    accepted(undef, 'mod-1', 'auth_request: the backend names mod-1',
        headers => [ 'X-Session' => 's3ss10n-one' ]);
    my $u = $t->last_upstream;
    ok(!grep({ lc eq 'x-session' } @{ $u->{header_order} }),
        'auth_request: the session header is not forwarded to Stream');

    # refusals in ACCESS are answered as APIError JSON too (docs/directives.md)
    $t->reset_upstream;
    my $r = ban_with(undef);
    is_refused($r, 401, 5, 'unauthorized', 'auth_request: the backend\'s 401');
    $r = ban_with(undef, headers => [ 'X-Session' => 'wrong' ]);
    is_refused($r, 403, 17, 'forbidden', 'auth_request: the backend\'s 403');
    is($t->upstream_count, 0, 'auth_request refusals: nothing upstream');

    unauthorized(undef, 5, 'unauthenticated',
        'auth_request: 2xx without X-User-Id is unauthenticated',
        headers => [ 'X-Session' => 's3ss10n-empty' ]);
}

$t->stop;

done_testing;
