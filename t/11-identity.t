#!/usr/bin/perl

# Identity (SPEC section 3): the user token in Authorization (raw or
# "Bearer"), every way it can be refused (status, Stream code, message,
# WWW-Authenticate, nothing upstream), the time claims and the leeway,
# stream_mod_token_secret_file (several keys; request_permission needs the
# API secret), stream_mod_identity $variable, and that no token reaches a
# log.

use strict;
use warnings;

use Test::More;
use JSON::PP;

use lib 't/lib';
use StreamMod::Test qw(mint_jwt);

my $t = StreamMod::Test->new;
my $d = $t->dir;

my $old_key = 'token-key-old-0123456789abcdef';
my $new_key = 'token-key-new-fedcba9876543210';
$t->write_file('token-old', "$old_key\n", 0600);
$t->write_file('token-new', "$new_key\n", 0600);

$t->write_policy({ rules => [ { effect => 'allow', actions => ['*'], users => ['*'] } ] });

# One port; servers chosen by Host (see gateway_server in t/lib).
sub server {
    my ($name, $extra) = @_;
    return $t->gateway_server($name, '', "        $extra");
}

(my $preamble = $t->http_preamble) =~ s/access_log \S+;/access_log $d\/access.log authlog;/
    or die 'no access_log in the preamble';

# info: the module's own refusals are logged at info; none may carry a token
local $ENV{STREAM_MOD_ERROR_LOG_LEVEL} = 'info';
$t->write_config(<<"CONF");
http {
    log_format authlog '\$remote_addr "\$request" \$status auth="\$http_authorization" '
                       'user="\$stream_mod_user" mod="\$http_x_moderator"';
$preamble
    stream_mod_api_key %%API_KEY%%;
    stream_mod_api_secret_file %%SECRET_FILE%%;
    stream_mod_policy %%DIR%%/policy.json;

    upstream stream_api {
        server 127.0.0.1:%%EMU_PORT%%;
    }

@{[ server('localhost', 'location = /not-gateway { return 204; }') ]}
@{[ server('leeway0', 'stream_mod_token_leeway 0;') ]}
@{[ server('leeway30', 'stream_mod_token_leeway 30s;') ]}
@{[ server('rotated', "stream_mod_token_secret_file $d/token-old;\n"
    . "        stream_mod_token_secret_file $d/token-new;") ]}
@{[ server('rotated-api', "stream_mod_token_secret_file $d/token-new;\n"
    . "        stream_mod_token_secret_file %%SECRET_FILE%%;") ]}
@{[ server('trusted', 'stream_mod_identity $http_x_moderator;') ]}
}
CONF

$t->run;

my $secret = $t->api_secret;
my $HDR = { alg => 'HS256', typ => 'JWT' };
my $now = time;
my @tokens_sent;    # every token string sent, to look for in the logs

sub claims { my (%c) = @_; return { user_id => 'mod-1', iat => int time, exp => int(time) + 3600, %c } }

# a JWT from raw segments: header/payload as JSON text or refs, signed
# with $key over exactly "h.p"
sub jwt {
    my ($hdr, $payload, $key) = @_;
    return mint_jwt($key // $secret, $hdr, $payload);
}


sub ban {
    my (%o) = @_;
    my @h = @{ $o{headers} || [] };
    if (defined $o{auth}) {
        push @h, Authorization => $o{auth};
        push @tokens_sent, $o{auth} =~ s/\ABearer //r if length $o{auth} > 20;
    }
    return $t->request(POST => $o{path} // '/moderation/ban',
        host => $o{host} // "localhost",
        body => $o{body} // '{"target_user_id":"u-2","timeout":5}',
        headers => [ @h, 'Content-Type' => 'application/json' ]);
}

# refused: 401 (or $o{status}), APIError with code and message, the
# WWW-Authenticate header on a 401, nothing upstream
sub refused {
    my ($name, $auth, $code, $msg, %o) = @_;
    my $status = $o{status} // 401;
    $t->reset_upstream;
    my $r = ban(auth => $auth, %o);
    is($r->{status}, $status, "$name: $status");
    is_deeply($r->{json}, { code => $code, message => $msg, StatusCode => $status,
        duration => '0.00ms', more_info => '', details => [] },
        "$name: APIError code $code \"$msg\"") or diag($r->{body});
    is_deeply($r->{headers}{'content-type'}, ['application/json'],
        "$name: Content-Type application/json");
    if ($status == 401) {
        is_deeply($r->{headers}{'www-authenticate'}, ['Bearer error="invalid_token"'],
            "$name: WWW-Authenticate: Bearer error=\"invalid_token\"");
    } else {
        ok(!$r->{headers}{'www-authenticate'}, "$name: no WWW-Authenticate on a $status");
    }
    is($t->upstream_count, 0, "$name: nothing reached the upstream");
    return $r;
}

# accepted: 201 from the emulator, the server token upstream, the caller
# stamped as banned_by_id
sub accepted {
    my ($name, $auth, %o) = @_;
    my $user = $o{user} // 'mod-1';
    $t->reset_upstream;
    my $r = ban(auth => $auth, %o);
    is($r->{status}, 201, "$name: 201") or diag($r->{body});
    my @up = $t->upstream_requests;
    is(scalar @up, 1, "$name: one upstream request");
    my $u = $up[-1] || {};
    my $a = $u->{headers}{authorization} || [];
    is(scalar @$a, 1, "$name: one Authorization upstream");
    is_deeply($t->verify_server_token($a->[0]), { server => JSON::PP::true },
        "$name: upstream Authorization is the server token, not the user token");
    is($u->{auth}{kind}, 'server', "$name: Stream saw a server token");
    is($u->{body}, qq({"banned_by_id":"$user","target_user_id":"u-2","timeout":5}),
        "$name: the body is stamped with banned_by_id \"$user\"");
    return $r;
}

my $MAL = 'malformed user token';
my $ALG = 'only HS256 tokens are accepted';
my $SIG = 'token signature is invalid';
my $NOUID = 'token has no user_id; server tokens are not accepted';
my $BADUID = 'invalid user_id claim';

# --------------------------------------------------------------------------
# the token's shape

my $good = jwt($HDR, claims());
my ($gh, $gp, $gs) = split /\./, $good;

{
    $t->reset_upstream;
    my $r = $t->request(POST => '/moderation/ban', json => { target_user_id => 'u-2' });
    is($r->{status}, 401, 'no Authorization header: 401');
    is_deeply($r->{json}, { code => 5, message => 'missing user token', StatusCode => 401,
        duration => '0.00ms', more_info => '', details => [] },
        'no Authorization header: APIError code 5 "missing user token"');
    is_deeply($r->{headers}{'www-authenticate'}, ['Bearer error="invalid_token"'],
        'no Authorization header: WWW-Authenticate');
    is_deeply($r->{headers}{'content-type'}, ['application/json'],
        'no Authorization header: Content-Type application/json');
    is($t->upstream_count, 0, 'no Authorization header: nothing upstream');
}

refused('Authorization: "" (empty)', '', 5, $MAL);
refused('Authorization: "Bearer " only', 'Bearer ', 5, $MAL);
refused('Authorization: "Bearer" only', 'Bearer', 5, $MAL);
refused('Authorization: "Basic <base64>"', 'Basic bW9kLTE6cGFzcw==', 5, $MAL);
refused('token with two segments', "$gh.$gp", 5, $MAL);
refused('token with one segment', $gh, 5, $MAL);
refused('token with four segments', "$good.$gs", 5, $MAL);
refused('token with an empty payload segment', "$gh..$gs", 5, $MAL);
refused('token with an empty header segment', ".$gp.$gs", 5, $MAL);
refused('token ending in "." (empty signature)', "$gh.$gp.", 5, $MAL);
refused("token with '+' in the payload", "$gh.${gp}+.$gs", 5, $MAL);
refused("token with '/' in the signature", "$gh.$gp." . substr($gs, 0, 42) . '/', 5, $MAL);
refused("token with '=' padding appended to the payload", "$gh.$gp=.$gs", 5, $MAL);
refused("token with '=' padding appended to the signature", "$good=", 5, $MAL);
refused('Bearer with two spaces before the token', "Bearer  $good", 5, $MAL);

# header
refused('header segment not JSON', jwt('not json', claims()), 5, $MAL);
refused('header is a JSON array', jwt('["HS256"]', claims()), 5, $MAL);
refused('header with invalid base64url length (5 chars)', "abcde.$gp.$gs", 5, $MAL);
refused('header with a duplicate "alg"', jwt('{"alg":"none","alg":"HS256"}', claims()), 5, $MAL);
refused('alg none, no signature', jwt({ alg => 'none' }, claims()) =~ s/[^.]*\z//r, 5, $MAL);
refused('alg none, with an HS256 signature', jwt({ alg => 'none', typ => 'JWT' }, claims()),
    5, $ALG);
refused('alg HS512', jwt({ alg => 'HS512', typ => 'JWT' }, claims()), 5, $ALG);
refused('alg RS256', jwt({ alg => 'RS256', typ => 'JWT' }, claims()), 5, $ALG);
refused('alg "hs256" (lower case)', jwt({ alg => 'hs256', typ => 'JWT' }, claims()), 5, $ALG);
refused('alg missing', jwt({ typ => 'JWT' }, claims()), 5, $ALG);
refused('alg a number', jwt('{"alg":256}', claims()), 5, $ALG);
refused('crit header present', jwt({ alg => 'HS256', typ => 'JWT', crit => ['exp'] }, claims()),
    5, $ALG);

# payload (signed correctly over what is sent)
refused('payload not JSON (validly signed)', jwt($HDR, 'user_id=mod-1'), 5, $MAL);
refused('payload a JSON array (validly signed)', jwt($HDR, '["mod-1"]'), 5, $MAL);
refused('payload with a duplicate user_id (validly signed)',
    jwt($HDR, '{"user_id":"u-2","user_id":"mod-1"}'), 5, $MAL);
refused('payload with trailing data after the object (validly signed)',
    jwt($HDR, '{"user_id":"mod-1"}x'), 5, $MAL);
refused('no user_id', jwt($HDR, { iat => int time }), 5, $NOUID);
refused('a server token {"server":true}', $t->server_token, 5, $NOUID);
refused('user_id a number', jwt($HDR, claims(user_id => 42)), 5, $BADUID);
refused('user_id null', jwt($HDR, '{"user_id":null}'), 5, $BADUID);
refused('user_id an empty string', jwt($HDR, claims(user_id => '')), 5, $BADUID);
refused('user_id of 256 chars', jwt($HDR, claims(user_id => 'a' x 256)), 5, $BADUID);
refused('user_id of 300 chars', jwt($HDR, claims(user_id => 'a' x 300)), 5, $BADUID);
refused('user_id with a space', jwt($HDR, claims(user_id => 'mod 1')), 5, $BADUID);
refused('user_id with a slash', jwt($HDR, claims(user_id => 'mod/1')), 5, $BADUID);
refused('user_id with a dot', jwt($HDR, claims(user_id => 'mod.1')), 5, $BADUID);
refused('user_id with a \\u0000 escape (the JSON parser refuses it)',
    jwt($HDR, '{"user_id":"mod\u00001"}'), 5, $MAL);

# signature
refused('bad signature (last char changed)',
    "$gh.$gp." . substr($gs, 0, 42) . (substr($gs, 42) eq 'A' ? 'B' : 'A'), 43, $SIG);
refused('signature of the right length from another payload',
    "$gh.$gp." . (split /\./, jwt($HDR, claims(user_id => 'u-2')))[2], 43, $SIG);
refused('signature one char short', substr($good, 0, -1), 43, $SIG);
refused('signature one char long', "${good}A", 43, $SIG);
refused('signature of 86 chars (HS512 length)', "$gh.$gp." . ('A' x 86), 43, $SIG);
refused('token signed with another secret', jwt($HDR, claims(), 'some-other-secret'), 43, $SIG);
refused('token signed with the secret plus a newline', jwt($HDR, claims(), "$secret\n"), 43, $SIG);

# the signature is checked before the claims: a forged token with an
# expired exp and no user_id still says "signature"
refused('forged token with expired exp: the signature is reported',
    jwt($HDR, { exp => int(time) - 3600 }, 'wrong'), 43, $SIG);

# size: the token itself (without "Bearer ") may be 4096 bytes
sub token_of_length {
    my ($len, $key) = @_;
    for my $pad (0 .. 2 * $len) {
        my $tok = jwt($HDR, claims(pad => 'x' x $pad), $key);
        return $tok if length $tok >= $len;
    }
}
my ($t4096, $t4097, $t6000) = map { token_of_length($_) } 4096, 4097, 6000;
is(length $t4096, 4096, 'a validly signed token of exactly 4096 bytes is made');
is(length $t4097, 4097, 'a validly signed token of exactly 4097 bytes is made');
accepted('a token of exactly 4096 bytes', $t4096);
refused('a token of 4097 bytes (validly signed)', $t4097, 5, $MAL);
refused('a token of 6000 bytes (validly signed)', $t6000, 5, $MAL);

# --------------------------------------------------------------------------
# time claims, default leeway 5 s

$now = int time;
refused('exp 60 s in the past', jwt($HDR, claims(exp => $now - 60)), 40, 'token has expired');
refused('exp 10 s in the past (beyond the 5 s leeway)', jwt($HDR, claims(exp => $now - 10)),
    40, 'token has expired');
accepted('exp 2 s in the past (within the 5 s leeway)', jwt($HDR, claims(exp => $now - 2)));
accepted('exp as a float in the future', jwt($HDR, qq({"user_id":"mod-1","exp":$now.5e0})));
refused('exp as a string', jwt($HDR, claims(exp => '' . ($now + 3600))), 5, $MAL);
refused('exp as a string, expired', jwt($HDR, claims(exp => '1')), 5, $MAL);
refused('exp true', jwt($HDR, claims(exp => JSON::PP::true)), 5, $MAL);
refused('nbf 60 s in the future', jwt($HDR, claims(nbf => $now + 60)), 41, 'token is not valid yet');
refused('nbf 10 s in the future (beyond the leeway)', jwt($HDR, claims(nbf => $now + 10)),
    41, 'token is not valid yet');
accepted('nbf 2 s in the future (within the leeway)', jwt($HDR, claims(nbf => $now + 2)));
refused('nbf as a string', jwt($HDR, claims(nbf => "$now")), 5, $MAL);
refused('iat 60 s in the future', jwt($HDR, claims(iat => $now + 60)), 42,
    'token used before issued at (iat)');
refused('iat 10 s in the future (beyond the leeway)', jwt($HDR, claims(iat => $now + 10)),
    42, 'token used before issued at (iat)');
accepted('iat 2 s in the future (within the leeway)', jwt($HDR, claims(iat => $now + 2)));
refused('iat as a string', jwt($HDR, claims(iat => "$now")), 5, $MAL);
accepted('no exp, nbf or iat at all', jwt($HDR, { user_id => 'mod-1' }));
refused('expired and not yet valid: exp is reported first',
    jwt($HDR, claims(exp => $now - 60, nbf => $now + 60)), 40, 'token has expired');

# --------------------------------------------------------------------------
# accepted forms

accepted('raw token (as Stream SDKs send it)', $good);
accepted('"Bearer <jwt>"', "Bearer $good");
accepted('"bearer <jwt>" (scheme is case-insensitive)', "bearer $good");
accepted('user_id of 255 chars', jwt($HDR, claims(user_id => 'a' x 255)), user => 'a' x 255);
accepted('user_id with @ _ -', jwt($HDR, claims(user_id => 'Mod_1@x-y')), user => 'Mod_1@x-y');
accepted('header without typ', jwt({ alg => 'HS256' }, claims()));
accepted('extra header fields (kid)', jwt({ alg => 'HS256', typ => 'JWT', kid => 'k1' }, claims()));

# --------------------------------------------------------------------------
# stream_mod_token_leeway 0 and 30s

$now = int time;
refused('leeway 0: exp 3 s in the past', jwt($HDR, claims(exp => $now - 3)), 40,
    'token has expired', host => 'leeway0');
refused('leeway 0: nbf 3 s in the future', jwt($HDR, claims(nbf => $now + 3)), 41,
    'token is not valid yet', host => 'leeway0');
refused('leeway 0: iat 3 s in the future', jwt($HDR, claims(iat => $now + 3)), 42,
    'token used before issued at (iat)', host => 'leeway0');
accepted('leeway 0: exp 60 s ahead', jwt($HDR, claims(exp => $now + 60)), host => 'leeway0');

accepted('leeway 30s: exp 20 s in the past', jwt($HDR, claims(exp => $now - 20)), host => 'leeway30');
accepted('leeway 30s: nbf 20 s in the future', jwt($HDR, claims(nbf => $now + 20)), host => 'leeway30');
accepted('leeway 30s: iat 20 s in the future', jwt($HDR, claims(iat => $now + 20)), host => 'leeway30');
refused('leeway 30s: exp 40 s in the past', jwt($HDR, claims(exp => $now - 40)), 40,
    'token has expired', host => 'leeway30');
refused('leeway 30s: nbf 40 s in the future', jwt($HDR, claims(nbf => $now + 40)), 41,
    'token is not valid yet', host => 'leeway30');
refused('leeway 30s: iat 40 s in the future', jwt($HDR, claims(iat => $now + 40)), 42,
    'token used before issued at (iat)', host => 'leeway30');

# --------------------------------------------------------------------------
# stream_mod_token_secret_file, given twice (old and new key)

accepted('two token keys: a token signed with the old key', jwt($HDR, claims(), $old_key),
    host => 'rotated');
accepted('two token keys: a token signed with the new key', jwt($HDR, claims(), $new_key),
    host => 'rotated');
refused('two token keys: a token signed with the API secret (not listed)',
    jwt($HDR, claims(), $secret), 43, $SIG, host => 'rotated');
refused('two token keys: a token signed with a third key', jwt($HDR, claims(), 'third'),
    43, $SIG, host => 'rotated');

my $RP = 'request_permission runs as the caller: it needs a user token signed with the API secret';
my $rp_body = '{"permissions":["send-audio"]}';

refused('two token keys: request_permission with a token signed with a token key',
    jwt($HDR, claims(), $new_key), 17, $RP, status => 403, host => 'rotated',
    path => '/calls/default/c-1/request_permission', body => $rp_body);

accepted('API secret listed as a token key: a token signed with the other key',
    jwt($HDR, claims(), $new_key), host => 'rotated-api');
accepted('API secret listed as a token key: a token signed with the API secret',
    jwt($HDR, claims(), $secret), host => 'rotated-api');
refused('API secret listed as a token key: request_permission with the other key',
    jwt($HDR, claims(), $new_key), 17, $RP, status => 403, host => 'rotated-api',
    path => '/calls/default/c-1/request_permission', body => $rp_body);

{
    my $user_token = jwt($HDR, claims());
    push @tokens_sent, $user_token;
    $t->reset_upstream;
    my $r = $t->request(POST => '/calls/default/c-1/request_permission', host => 'rotated-api',
        token => $user_token, body => $rp_body, headers => ['Content-Type' => 'application/json']);
    is($r->{status}, 201, 'API secret listed: request_permission with an API-secret token: 201')
        or diag($r->{body});
    my $u = $t->last_upstream || {};
    is($t->upstream_count, 1, 'API secret listed: request_permission reached the upstream');
    is_deeply($u->{headers}{authorization}, [$user_token],
        'API secret listed: request_permission carries the user token upstream, raw');
    is($u->{auth}{kind}, 'user', 'API secret listed: Stream saw the user token');
    is($u->{body}, $rp_body, 'API secret listed: request_permission body unchanged');
}

{
    # default server (no token key): request_permission works with the API secret
    my $user_token = jwt($HDR, claims());
    push @tokens_sent, $user_token;
    $t->reset_upstream;
    my $r = $t->request(POST => '/calls/default/c-1/request_permission',
        headers => [Authorization => $user_token, 'Content-Type' => 'application/json'],
        body => $rp_body);
    is($r->{status}, 201, 'no token key: request_permission with a raw API-secret token: 201');
    is_deeply(($t->last_upstream || {})->{headers}{authorization}, [$user_token],
        'no token key: request_permission carries the raw user token upstream');
}

# --------------------------------------------------------------------------
# stream_mod_identity $http_x_moderator

accepted('identity $http_x_moderator: X-Moderator: mod-7 is the caller', undef,
    host => 'trusted', headers => ['X-Moderator' => 'mod-7'], user => 'mod-7');
accepted('identity $http_x_moderator: a user token in Authorization is ignored',
    jwt($HDR, claims(user_id => 'mod-1')),
    host => 'trusted', headers => ['X-Moderator' => 'mod-7'], user => 'mod-7');
refused('identity $http_x_moderator: no X-Moderator', undef, 5, 'unauthenticated',
    host => 'trusted');
refused('identity $http_x_moderator: no X-Moderator, a valid user token', $good, 5,
    'unauthenticated', host => 'trusted');
refused('identity $http_x_moderator: X-Moderator empty', undef, 5, 'unauthenticated',
    host => 'trusted', headers => ['X-Moderator' => '']);
refused('identity $http_x_moderator: X-Moderator "mod/7"', undef, 5, 'invalid user id',
    host => 'trusted', headers => ['X-Moderator' => 'mod/7']);
refused('identity $http_x_moderator: X-Moderator "mod 7"', undef, 5, 'invalid user id',
    host => 'trusted', headers => ['X-Moderator' => 'mod 7']);
refused('identity $http_x_moderator: X-Moderator of 256 chars', undef, 5, 'invalid user id',
    host => 'trusted', headers => ['X-Moderator' => 'm' x 256]);
refused('identity $http_x_moderator: request_permission', jwt($HDR, claims()), 17, $RP,
    status => 403, host => 'trusted', headers => ['X-Moderator' => 'mod-7'],
    path => '/calls/default/c-1/request_permission', body => $rp_body);
refused('identity $http_x_moderator: banned_by_id of someone else', undef, 17,
    'acting user mismatch: banned_by_id must be the caller', status => 403,
    host => 'trusted', headers => ['X-Moderator' => 'mod-7'],
    body => '{"target_user_id":"u-2","banned_by_id":"mod-1"}');

# --------------------------------------------------------------------------
# no token in any log

# outside a gateway location the log format does show Authorization: the
# checks below would see a token that leaked
my $canary = jwt($HDR, claims(user_id => 'canary'));
$t->request(GET => '/not-gateway', headers => [Authorization => $canary]);

$t->stop;

my $elog = $t->error_log;
my $alog = $t->access_log;
like($alog, qr/"GET \/not-gateway HTTP\/1.1" 204 auth="\Q$canary\E"/,
    'access.log shows Authorization outside the gateway (the format works)');
like($elog, qr/\[info\] .*stream_mod: 401 malformed user token/,
    'error.log at info has the module\'s refusals');
like($alog, qr/auth="" user="mod-1"/, 'access.log has lines for the gateway requests')
    or diag($alog);
my $gw_log = join "\n", grep { !/not-gateway/ } split /\n/, $alog;
unlike($gw_log, qr/auth="(?!-")[^"]/, q{access.log: $http_authorization is always empty (or "-" when absent)});
like($alog, qr/auth="" user="mod-7" mod="mod-7"/, 'access.log: trusted caller logged by id');
my @leaks = grep { index($elog . $gw_log, $_) >= 0 } @tokens_sent;
is(scalar @leaks, 0, 'no token sent ('. scalar(@tokens_sent) . ') appears in error.log or access.log')
    or diag("leaked: $leaks[0]");
my @segs = grep { length > 30 } map { (split /\./)[2] // () } @tokens_sent;
my @seg_leaks = grep { index($elog . $gw_log, $_) >= 0 } @segs;
is(scalar @seg_leaks, 0, 'no token signature appears in error.log or access.log');
unlike($elog . $alog, qr/\Q$secret\E|\Q$old_key\E|\Q$new_key\E/, 'no secret in the logs');

done_testing;
