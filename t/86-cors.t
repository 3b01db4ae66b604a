#!/usr/bin/perl

# CORS (SPEC section 8, docs/directives.md stream_mod_cors_origins): a
# preflight from a listed origin is answered 204 with the Allow-* headers
# without a token; from any other origin 403.  Every other response to a
# listed origin, the gate's errors (401, 429, 403, 404, 405, 502) and
# Stream's own answers included, carries Access-Control-Allow-Origin,
# Vary: Origin and Access-Control-Expose-Headers; responses to other
# origins carry no CORS headers; Origin never goes upstream.  Without
# stream_mod_cors_origins there are no CORS headers and OPTIONS is 405.

use strict;
use warnings;

use Test::More;
use JSON::PP;

use lib 't/lib';
use StreamMod::Test;

my $t = StreamMod::Test->new;

$t->write_policy({
    rules => [
        { effect => 'deny', actions => ['ban'], users => ['*'],
          when => { ip_ban => JSON::PP::true } },
        { effect => 'allow', actions => ['*'], users => ['*'] },
    ],
});

my $APP   = 'https://app.example.com';
my $LOCAL = 'http://localhost:3000';

sub server {
    my ($name, $extra, $loc_extra) = @_;
    my $loc = '            stream_mod_limit zone=mods burst=0;';
    $loc .= "\n$loc_extra" if defined $loc_extra;
    return $t->gateway_server($name, $loc, $extra);
}

$t->write_config("http {\n" . $t->http_preamble . <<'CONF'
    stream_mod_api_key %%API_KEY%%;
    stream_mod_api_secret_file %%SECRET_FILE%%;
    stream_mod_policy %%DIR%%/policy.json;
    stream_mod_limit_zone zone=mods:1m rate=6r/m;

    upstream stream_api {
        server 127.0.0.1:%%EMU_PORT%%;
    }

CONF
    . server('localhost', "        stream_mod_cors_origins $APP $LOCAL;")
    . server('nocors', '')
    . server('denied', "        stream_mod_cors_origins $APP $LOCAL;", '            deny all;')
    . server('authreq', "        stream_mod_cors_origins $APP $LOCAL;\n"
        . "        location = /_auth { internal; return 401; }",
        '            auth_request /_auth;')
    . "}\n")->run;

# --------------------------------------------------------------------------
# helpers

my %tokens;
sub tok { $tokens{ $_[0] } //= $t->user_token($_[0]) }

sub api_error_body {
    my ($code, $status, $message) = @_;
    return qq({"code":$code,"message":"$message","StatusCode":$status,)
      . qq("duration":"0.00ms","more_info":"","details":[]});
}

sub preflight {
    my ($path, $origin, %o) = @_;
    return $t->request(OPTIONS => $path, host => $o{host} // 'localhost',
        headers => [
            Origin => $origin,
            'Access-Control-Request-Method' => $o{method} // 'POST',
            'Access-Control-Request-Headers' => 'authorization,content-type',
            @{ $o{headers} || [] },
        ],
        $o{token} ? (token => $o{token}) : ());
}

sub ban {
    my ($origin, %o) = @_;
    return $t->request(POST => '/moderation/ban', host => $o{host} // 'localhost',
        headers => [ defined $origin ? (Origin => $origin) : () ],
        exists $o{token} ? (defined $o{token} ? (token => $o{token}) : ())
                         : (token => tok($o{user} // 'bob')),
        json => { target_user_id => 'target-1', %{ $o{extra} || {} } });
}

sub list_of {    # a comma-separated header value, lower-cased
    my ($v) = @_;
    return [ map { lc } grep { length } split /\s*,\s*/, $v // '' ];
}

sub cors_names {
    my ($r) = @_;
    return join ' ', sort grep { /\Aaccess-control-/ } keys %{ $r->{headers} };
}

# the headers every non-preflight response to a listed origin carries
sub has_cors {
    my ($r, $origin, $name) = @_;
    is_deeply($r->{headers}{'access-control-allow-origin'}, [$origin],
        "$name: one Access-Control-Allow-Origin: $origin");
    ok((grep { lc($_) eq 'origin' } map { @{ list_of($_) } } @{ $r->{headers}{vary} || [] }),
        "$name: Vary: Origin");
    my $expose = list_of(join ',', @{ $r->{headers}{'access-control-expose-headers'} || [] });
    my %e = map { $_ => 1 } @$expose;
    ok(!grep({ !$e{$_} } qw(retry-after x-ratelimit-limit x-ratelimit-remaining x-ratelimit-reset)),
        "$name: Access-Control-Expose-Headers lists Retry-After and X-RateLimit-*")
        or diag("@$expose");
}

sub no_cors {
    my ($r, $name) = @_;
    is(cors_names($r), '', "$name: no Access-Control-* header");
}

# --------------------------------------------------------------------------
# preflight from a listed origin: 204 without a token

$t->reset_upstream;

my $r = preflight('/moderation/ban', $APP);
is($r->{status}, 204, "preflight OPTIONS /moderation/ban from $APP, no token: 204");
is($r->{body}, '', 'preflight: no body');
is_deeply($r->{headers}{'access-control-allow-origin'}, [$APP],
    "preflight: Access-Control-Allow-Origin: $APP");
my $methods = list_of(join ',', @{ $r->{headers}{'access-control-allow-methods'} || [] });
is_deeply([ sort @$methods ], [qw(delete get post)],
    'preflight: Access-Control-Allow-Methods: GET, POST, DELETE');
my %allow_h = map { $_ => 1 } @{ list_of(join ',', @{ $r->{headers}{'access-control-allow-headers'} || [] }) };
ok($allow_h{authorization} && $allow_h{'content-type'},
    'preflight: Access-Control-Allow-Headers has Authorization and Content-Type')
    or diag(join ' ', keys %allow_h);
is_deeply($r->{headers}{'access-control-max-age'}, ['600'], 'preflight: Access-Control-Max-Age: 600');
is_deeply($r->{headers}{vary}, ['Origin'], 'preflight: Vary: Origin');
ok(!exists $r->{headers}{'access-control-expose-headers'},
    'preflight: no Access-Control-Expose-Headers (not a response a script reads)');

$r = preflight('/calls/default/c-1/kick', $LOCAL);
is($r->{status}, 204, "preflight OPTIONS /calls/default/c-1/kick from $LOCAL: 204");
is_deeply($r->{headers}{'access-control-allow-origin'}, [$LOCAL],
    "preflight from $LOCAL: Access-Control-Allow-Origin: $LOCAL");

$r = preflight('/moderation/ban', $APP, method => 'DELETE');
is($r->{status}, 204, 'preflight for DELETE /moderation/ban: 204');

$r = preflight('/moderation/ban', $APP,
    token => $t->token({ user_id => 'bob' }, secret => 'wrong-secret'));
is($r->{status}, 204, 'preflight with a forged token: 204 (the token is not looked at)');

$r = preflight('/moderation/ban', 'HTTPS://APP.Example.COM');
is($r->{status}, 204, 'preflight from HTTPS://APP.Example.COM: 204 (ASCII case ignored)');
is_deeply($r->{headers}{'access-control-allow-origin'}, ['HTTPS://APP.Example.COM'],
    'preflight from HTTPS://APP.Example.COM: the request\'s Origin is echoed');

is($t->upstream_count, 0, 'preflights: nothing reached the upstream');

# --------------------------------------------------------------------------
# preflight from any other origin: 403

for my $origin ('https://evil.example.com', 'https://app.example.com.evil.com',
    'https://app.example.co', 'http://app.example.com', 'http://localhost:30000',
    'https://app.example.com/', 'null')
{
    $t->reset_upstream;
    $r = preflight('/moderation/ban', $origin);
    is($r->{status}, 403, "preflight from $origin: 403");
    is($r->{body}, api_error_body(17, 403, 'origin not allowed'),
        "preflight from $origin: APIError code 17, origin not allowed");
    is_deeply($r->{headers}{'content-type'}, ['application/json'],
        "preflight from $origin: Content-Type application/json");
    no_cors($r, "preflight from $origin");
    is($t->upstream_count, 0, "preflight from $origin: nothing upstream");
}

# --------------------------------------------------------------------------
# requests from a listed origin

$t->reset_upstream;
$r = ban($APP);
is($r->{status}, 201, "POST /moderation/ban from $APP: 201");
has_cors($r, $APP, 'ban from a listed origin (201)');
is($t->upstream_count, 1, 'ban from a listed origin: forwarded');
ok(!exists $t->last_upstream->{headers}{origin}, 'ban from a listed origin: Origin is not forwarded');

# the gate's errors carry the CORS headers too

$t->reset_upstream;
$r = ban($APP, token => undef);
is($r->{status}, 401, "ban without a token from $APP: 401");
is($r->{body}, api_error_body(5, 401, 'missing user token'), '401: APIError code 5');
is_deeply($r->{headers}{'www-authenticate'}, ['Bearer error="invalid_token"'],
    '401: WWW-Authenticate');
has_cors($r, $APP, '401 to a listed origin');
is($t->upstream_count, 0, '401: nothing upstream');

$r = ban($APP);    # bob again: burst=0 at 6r/m
is($r->{status}, 429, "second quick ban by bob from $APP: 429");
is($r->{body}, api_error_body(9, 429, 'rate limit exceeded (zone mods)'), '429: APIError code 9');
ok(defined $r->{headers}{'retry-after'} && defined $r->{headers}{'x-ratelimit-limit'},
    '429: Retry-After and X-RateLimit-Limit present');
has_cors($r, $APP, '429 to a listed origin');
is($t->upstream_count, 0, '429: nothing upstream');

$r = ban($APP, user => 'carol', extra => { ip_ban => JSON::PP::true });
is($r->{status}, 403, "denied ban from $APP: 403");
is($r->{body}, api_error_body(17, 403, 'denied by rule 1'), '403 (policy): APIError code 17');
has_cors($r, $APP, '403 (policy) to a listed origin');

$r = $t->request(POST => '/moderation/nope', token => tok('carol'), json => {},
    headers => [ Origin => $LOCAL ]);
is($r->{status}, 404, "POST /moderation/nope from $LOCAL: 404");
is($r->{body}, api_error_body(16, 404, 'no moderation endpoint at this path'),
    '404: APIError code 16');
has_cors($r, $LOCAL, '404 to a listed origin');

# OPTIONS without Access-Control-Request-Method is not a preflight
$r = $t->request(OPTIONS => '/moderation/ban', headers => [ Origin => $APP ]);
is($r->{status}, 405, "OPTIONS without Access-Control-Request-Method from $APP: 405");
is($r->{body}, api_error_body(4, 405, 'method OPTIONS is not allowed here'),
    'OPTIONS, not a preflight: APIError code 4');
is_deeply($r->{headers}{allow}, ['POST, DELETE'], 'OPTIONS, not a preflight: Allow: POST, DELETE');
has_cors($r, $APP, '405 to a listed origin');

is($t->upstream_count, 0, 'the refused requests: nothing upstream');

# Stream's own answers and NGINX's upstream errors

$t->emu_control({ status => 400, body => { code => 4, message => 'emulated', StatusCode => 400 } });
$r = ban($APP, user => 'dave');
is($r->{status}, 400, "ban from $APP, Stream answers 400: 400 passed through");
is($r->{json}{message}, 'emulated', 'Stream\'s 400 body passed through');
has_cors($r, $APP, 'Stream\'s 400 to a listed origin');

$t->emu_control({ close => JSON::PP::true });
$r = ban($APP, user => 'erin');
is($r->{status}, 502, "ban from $APP, Stream closes the connection: 502");
is($r->{body}, api_error_body(-1, 502, 'upstream unavailable'), '502: APIError code -1');
has_cors($r, $APP, '502 to a listed origin');
$t->emu_control(undef);

# an ACCESS-phase refusal (deny all) in a stream_mod location is answered
# as an APIError by the module: a browser must be able to read it too
$t->reset_upstream;
$r = ban($APP, host => 'denied', user => 'frank');
is($r->{status}, 403, "ban from $APP to a location with deny all: 403");
is($r->{body}, api_error_body(17, 403, 'forbidden'), 'deny all: APIError code 17, forbidden');
has_cors($r, $APP, 'deny all, 403 to a listed origin');
is($t->upstream_count, 0, 'deny all: nothing upstream');

# the same for a 401 from auth_request (the auth layer of
# stream_mod_identity $variable): the browser must read it
$r = ban($APP, host => 'authreq', user => 'frank');
is($r->{status}, 401, "ban from $APP, auth_request answers 401: 401");
is($r->{body}, api_error_body(5, 401, 'unauthorized'), 'auth_request 401: APIError code 5, unauthorized');
has_cors($r, $APP, 'auth_request 401 to a listed origin');
is($t->upstream_count, 0, 'auth_request 401: nothing upstream');

# --------------------------------------------------------------------------
# requests from other origins: served, without CORS headers

$t->reset_upstream;
$r = ban('https://evil.example.com', user => 'gus');
is($r->{status}, 201, 'ban from an unlisted origin: 201 (the browser enforces CORS)');
no_cors($r, 'ban from an unlisted origin');
ok(!exists $t->last_upstream->{headers}{origin}, 'ban from an unlisted origin: Origin is not forwarded');

$r = ban('https://evil.example.com', token => undef);
is($r->{status}, 401, '401 to an unlisted origin');
no_cors($r, '401 to an unlisted origin');

$r = ban(undef, user => 'hal');
is($r->{status}, 201, 'ban without Origin: 201');
no_cors($r, 'ban without Origin');

# --------------------------------------------------------------------------
# without stream_mod_cors_origins

$t->reset_upstream;
$r = preflight('/moderation/ban', $APP, host => 'nocors');
is($r->{status}, 405, "no cors_origins: preflight from $APP: 405");
is($r->{body}, api_error_body(4, 405, 'method OPTIONS is not allowed here'),
    'no cors_origins: preflight answered APIError code 4');
is_deeply($r->{headers}{allow}, ['POST, DELETE'], 'no cors_origins: Allow: POST, DELETE');
no_cors($r, 'no cors_origins: preflight');
is($t->upstream_count, 0, 'no cors_origins: preflight not forwarded');

$r = ban($APP, host => 'nocors', user => 'ivy');
is($r->{status}, 201, "no cors_origins: ban from $APP: 201");
no_cors($r, 'no cors_origins: ban');
ok(!exists $t->last_upstream->{headers}{origin}, 'no cors_origins: Origin is not forwarded');

$r = ban($APP, host => 'nocors', token => undef);
is($r->{status}, 401, "no cors_origins: 401 from $APP");
no_cors($r, 'no cors_origins: 401');

$t->stop;

done_testing;
