#!/usr/bin/perl

# The hostile-input matrix: one table of requests a hostile or broken client
# can send (tokens, paths, queries, bodies, chunked framing, headers), each
# with the exact answer it must get and, for every row, what reached the
# upstream: nothing at all for a refusal, exactly the gated request for the
# few rows that must succeed (accepted token spellings, a dropped query,
# valid chunked or spooled bodies).
#
# A row is:
#   name    what is sent and what must come back ("per code" where the SPEC
#           is silent and the row follows the C sources / NGINX)
#   req     the exact request bytes (built with the helpers below)
#   expect  [status, code, message regex]
#             code 'nginx': NGINX answers before any stream_mod location
#             (or outside one): the status only, never a 2xx
#             status 'closed': no response at all, the server closes
#   up      undef: nothing reached the upstream; or a hash describing the
#           one upstream request that must have been made
#   how     how to send: raw (default), half_close, stall, expect100,
#           pipeline
#
# Every row is one subtest; a failing row prints its request bytes.

use strict;
use warnings;

use Test::More;
use IO::Socket::INET;
use IO::Select;
use JSON::PP;
use Time::HiRes qw(time sleep);

use lib 't/lib';
use StreamMod::Test qw(mint_jwt b64url);

my $t = StreamMod::Test->new;

$t->write_policy({
    role_claim => 'role',
    rules => [
        { effect => 'allow', actions => ['*'], users => ['mod-1'] },
        { effect => 'allow', actions => ['*'], roles => ['admin'] },
    ],
});

# /moderation/unblock: bodies over 1k are spooled to a temporary file.
# /moderation/mute: a 2m body limit (the 50 000-key body).
# client_body_timeout 1s everywhere: a body that never comes.
$t->write_config($t->default_config(server => <<'CONF'));
        client_body_timeout 1s;

        location = /moderation/unblock {
            stream_mod on;
            client_body_buffer_size 1k;
            proxy_pass http://stream_api;
        }

        location = /moderation/mute {
            stream_mod on;
            stream_mod_max_body_size 2m;
            client_max_body_size 2m;
            proxy_pass http://stream_api;
        }
CONF

$t->run;

my $KEY    = $t->api_key;
my $SECRET = $t->api_secret;
my $NOW    = time;
my $TOKEN  = $t->user_token('mod-1');
my $HDR    = '{"alg":"HS256","typ":"JWT"}';

my $BAN    = '{"target_user_id":"u-2"}';
my $UBAN   = '{"banned_by_id":"mod-1","target_user_id":"u-2"}';

my $MALFORMED = qr/\Amalformed user token\z/;
my $ONLY_HS   = qr/\Aonly HS256 tokens are accepted\z/;
my $BADSIG    = qr/\Atoken signature is invalid\z/;
my $BADUID    = qr/\Ainvalid user_id claim\z/;
my $DOT       = qr/\Adot segments are not allowed in the path\z/;
my $ESC       = qr/\Aencoded or escaped characters are not allowed in the path\z/;
my $EMPTY     = qr/\Aempty path segment\z/;
my $PARAM     = qr/\Ainvalid path parameter: expected \[A-Za-z0-9\@_-\]\{1,64\}\z/;
my $NF        = qr/\Ano moderation endpoint at this path\z/;
my $BADJSON   = qr/\Ainvalid JSON body at line \d+, column \d+\z/;
my $DUP       = qr/\Aduplicate key in JSON body at line \d+, column \d+\z/;
my $NOTOBJ    = qr/\Abody must be a JSON object\z/;
my $CT415     = qr/\AContent-Type must be application\/json\z/;

###############################################################################
# request builders

# http($method, $path, %o): the exact bytes of one request.
#   auth => value of Authorization (default "Bearer $TOKEN"; undef: none)
#   body => bytes (Content-Length from it unless cl => N or te => ...)
#   ct   => Content-Type (default application/json with a body; undef: none)
#   headers => [name => value, ...] after the standard ones
#   te   => Transfer-Encoding value (body sent as given, no Content-Length)
#   version => '1.1', no_host => 1, keepalive => 1
sub http {
    my ($method, $path, %o) = @_;
    my @h;
    push @h, [ Host => $o{host} // '127.0.0.1:' . $t->port ] unless $o{no_host};
    my $auth = exists $o{auth} ? $o{auth} : "Bearer $TOKEN";
    push @h, [ Authorization => $auth ] if defined $auth;
    my $body = $o{body};
    my $ct = exists $o{ct} ? $o{ct} : (defined $body ? 'application/json' : undef);
    push @h, [ 'Content-Type' => $ct ] if defined $ct;
    my @x = @{ $o{headers} || [] };
    push @h, [ splice(@x, 0, 2) ] while @x;
    if (defined $o{te}) {
        push @h, [ 'Transfer-Encoding' => $o{te} ];
    } elsif (defined $o{cl}) {
        push @h, [ 'Content-Length' => $o{cl} ];
    } elsif (defined $body) {
        push @h, [ 'Content-Length' => length $body ];
    } elsif ($method eq 'POST' || $method eq 'DELETE') {
        push @h, [ 'Content-Length' => 0 ];
    }
    push @h, [ Connection => 'close' ] unless $o{keepalive};
    return "$method $path HTTP/" . ($o{version} // '1.1') . "\r\n"
        . join('', map { "$_->[0]: $_->[1]\r\n" } @h) . "\r\n" . ($body // '');
}

sub ban { my (%o) = @_; return http(POST => '/moderation/ban', body => $BAN, %o) }

sub chunked {
    my (@chunks) = @_;
    return join('', map { sprintf("%x\r\n%s\r\n", length $_, $_) } @chunks) . "0\r\n\r\n";
}

# JWT payload as JSON text: defaults user_id "mod-1", iat now, exp in an
# hour; values are raw JSON text, undef leaves a claim out
sub pl {
    my (%c) = @_;
    my %d = (user_id => '"mod-1"', iat => int $NOW, exp => int($NOW) + 3600, %c);
    my @order = ((grep { exists $d{$_} } qw(user_id iat exp)),
        sort grep { !/\A(?:user_id|iat|exp)\z/ } keys %d);
    return '{' . join(',', map { "\"$_\":$d{$_}" } grep { defined $d{$_} } @order) . '}';
}

# an HS256 token over exactly these header and payload texts
sub jwt {
    my ($payload, %o) = @_;
    return mint_jwt($o{key} // $SECRET, $o{hdr} // $HDR, $payload // pl());
}

# replace one segment (0 header, 1 payload, 2 signature) of a token
sub seg {
    my ($tok, $i, $new) = @_;
    my @s = split /\./, $tok, -1;
    $s[$i] = $new;
    return join '.', @s;
}

###############################################################################
# the matrix

my @rows;

sub row {
    my ($name, $req, $expect, %o) = @_;
    push @rows, { name => $name, req => $req, expect => $expect, %o };
}

# a request the gate refuses: [status, code, regex]
sub no401 { return [ 401, $_[0], $_[1] ] }

# the one upstream request of an accepted ban by mod-1
my %UP_BAN = (path => '/api/v2/moderation/ban', query => "api_key=$KEY", body => $UBAN);
my $OK201 = [ 201, undef, undef ];

# ---------------------------------------------------------------------------
# JWT: the Authorization header and the token's form

row('JWT: no Authorization header -> 401 code 5 missing user token',
    ban(auth => undef), no401(5, qr/\Amissing user token\z/));
row('JWT: empty Authorization value -> 401 code 5 malformed',
    ban(auth => ''), no401(5, $MALFORMED));
row('JWT: "Bearer" and nothing else -> 401 code 5 malformed',
    ban(auth => 'Bearer'), no401(5, $MALFORMED));
row('JWT: "Bearer" followed by spaces only (NGINX trims them) -> 401 code 5 malformed',
    ban(auth => 'Bearer    '), no401(5, $MALFORMED));
row('JWT: "Bearer" then two spaces before the token -> 401 code 5 malformed (per code: one space only)',
    ban(auth => "Bearer  $TOKEN"), no401(5, $MALFORMED));
row('JWT: "Bearer<TAB>token" -> 401 code 5 malformed (per code: the scheme needs a space)',
    ban(auth => "Bearer\t$TOKEN"), no401(5, $MALFORMED));
row('JWT: valid token followed by a TAB (NGINX keeps a trailing TAB) -> 401 code 5 malformed (per code)',
    ban(auth => "Bearer $TOKEN\t"), no401(5, $MALFORMED));
row('JWT: "Bearer Bearer token" -> 401 code 5 malformed',
    ban(auth => "Bearer Bearer $TOKEN"), no401(5, $MALFORMED));
row('JWT: "Basic" credentials -> 401 code 5 malformed',
    ban(auth => 'Basic bW9kLTE6cGFzcw=='), no401(5, $MALFORMED));
row('JWT: two tokens in one header "Bearer a, Bearer b" -> 401 code 5 malformed',
    ban(auth => "Bearer $TOKEN, Bearer $TOKEN"), no401(5, $MALFORMED));
row('JWT: token in the query string only (?authorization=..&access_token=..) -> 401 code 5 missing',
    http(POST => "/moderation/ban?authorization=Bearer%20$TOKEN&access_token=$TOKEN", body => $BAN,
        auth => undef), no401(5, qr/\Amissing user token\z/));
row('JWT: token in a Cookie only -> 401 code 5 missing',
    ban(auth => undef, headers => [ Cookie => "token=$TOKEN; authorization=Bearer $TOKEN" ]),
    no401(5, qr/\Amissing user token\z/));
row('JWT: token in Proxy-Authorization only -> 401 code 5 missing',
    ban(auth => undef, headers => [ 'Proxy-Authorization' => "Bearer $TOKEN" ]),
    no401(5, qr/\Amissing user token\z/));
row('JWT: a token with a leading UTF-8 zero-width space -> 401 code 5 malformed',
    ban(auth => "Bearer \xe2\x80\x8b$TOKEN"), no401(5, $MALFORMED));

# accepted spellings: success, the caller stamped, the server token upstream
row('JWT: valid token followed by spaces (NGINX trims them) -> accepted, 201',
    ban(auth => "Bearer $TOKEN   "), $OK201, up => {%UP_BAN});
row('JWT: "bearer" in lower case -> accepted (case-insensitive scheme), 201',
    ban(auth => "bearer $TOKEN"), $OK201, up => {%UP_BAN});
row('JWT: "BEARER" in upper case -> accepted, 201',
    ban(auth => "BEARER $TOKEN"), $OK201, up => {%UP_BAN});
row('JWT: the raw token without a scheme (Stream SDK style) -> accepted, 201',
    ban(auth => $TOKEN), $OK201, up => {%UP_BAN});
row('JWT: spaces between "Authorization:" and the value (NGINX skips them) -> accepted, 201',
    ban(auth => "     Bearer $TOKEN"), $OK201, up => {%UP_BAN});

# the header's alg
row('JWT: alg "none" with an empty signature -> 401 code 5 malformed (empty third segment)',
    ban(auth => 'Bearer ' . seg(jwt(pl(), hdr => '{"alg":"none","typ":"JWT"}'), 2, '')),
    no401(5, $MALFORMED));
row('JWT: alg "none" with a valid HMAC signature -> 401 code 5 only HS256',
    ban(auth => 'Bearer ' . jwt(pl(), hdr => '{"alg":"none","typ":"JWT"}')), no401(5, $ONLY_HS));
row('JWT: alg "HS512" (signed HS256 with the secret) -> 401 code 5 only HS256',
    ban(auth => 'Bearer ' . jwt(pl(), hdr => '{"alg":"HS512","typ":"JWT"}')), no401(5, $ONLY_HS));
row('JWT: alg "RS256" -> 401 code 5 only HS256',
    ban(auth => 'Bearer ' . jwt(pl(), hdr => '{"alg":"RS256","typ":"JWT"}')), no401(5, $ONLY_HS));
row('JWT: alg "HS256 " (trailing space) -> 401 code 5 only HS256',
    ban(auth => 'Bearer ' . jwt(pl(), hdr => '{"alg":"HS256 ","typ":"JWT"}')), no401(5, $ONLY_HS));
row('JWT: alg "hs256" (lower case) -> 401 code 5 only HS256',
    ban(auth => 'Bearer ' . jwt(pl(), hdr => '{"alg":"hs256","typ":"JWT"}')), no401(5, $ONLY_HS));
row('JWT: no alg in the header -> 401 code 5 only HS256',
    ban(auth => 'Bearer ' . jwt(pl(), hdr => '{"typ":"JWT"}')), no401(5, $ONLY_HS));
row('JWT: alg ["HS256"] (an array) -> 401 code 5 only HS256',
    ban(auth => 'Bearer ' . jwt(pl(), hdr => '{"alg":["HS256"],"typ":"JWT"}')), no401(5, $ONLY_HS));
row('JWT: alg null -> 401 code 5 only HS256',
    ban(auth => 'Bearer ' . jwt(pl(), hdr => '{"alg":null}')), no401(5, $ONLY_HS));
row('JWT: a crit header -> 401 code 5 only HS256',
    ban(auth => 'Bearer ' . jwt(pl(), hdr => '{"alg":"HS256","crit":["exp"],"exp":1}')),
    no401(5, $ONLY_HS));
row('JWT: header with alg twice ("none" then "HS256") -> 401 code 5 malformed (duplicate key)',
    ban(auth => 'Bearer ' . jwt(pl(), hdr => '{"alg":"none","alg":"HS256"}')), no401(5, $MALFORMED));
row('JWT: header is a JSON array -> 401 code 5 malformed',
    ban(auth => 'Bearer ' . jwt(pl(), hdr => '["HS256"]')), no401(5, $MALFORMED));
row('JWT: header is not JSON -> 401 code 5 malformed',
    ban(auth => 'Bearer ' . jwt(pl(), hdr => 'alg=HS256')), no401(5, $MALFORMED));
row('JWT: header with invalid UTF-8 -> 401 code 5 malformed',
    ban(auth => 'Bearer ' . jwt(pl(), hdr => "{\"alg\":\"HS256\",\"x\":\"\xc0\xaf\"}")),
    no401(5, $MALFORMED));
row('JWT: a 5000-byte header segment -> 401 code 5 malformed (token over 4096 bytes)',
    ban(auth => 'Bearer ' . jwt(pl(), hdr => '{"alg":"HS256","x":"' . ('h' x 3720) . '"}')),
    no401(5, $MALFORMED));

# base64url and segments
{
    my ($h, $p, $s) = split /\./, $TOKEN;
    row('JWT: "+" in the header segment -> 401 code 5 malformed',
        ban(auth => 'Bearer ' . seg($TOKEN, 0, substr($h, 0, 5) . '+' . substr($h, 6))),
        no401(5, $MALFORMED));
    row('JWT: "/" in the payload segment -> 401 code 5 malformed',
        ban(auth => 'Bearer ' . seg($TOKEN, 1, substr($p, 0, 5) . '/' . substr($p, 6))),
        no401(5, $MALFORMED));
    row('JWT: "=" padding after the payload -> 401 code 5 malformed',
        ban(auth => 'Bearer ' . seg($TOKEN, 1, "$p==")), no401(5, $MALFORMED));
    row('JWT: "=" padding after the signature -> 401 code 5 malformed',
        ban(auth => "Bearer $TOKEN="), no401(5, $MALFORMED));
    row('JWT: "*" in the signature -> 401 code 5 malformed',
        ban(auth => 'Bearer ' . seg($TOKEN, 2, substr($s, 0, 42) . '*')), no401(5, $MALFORMED));
    row('JWT: a space inside the payload segment -> 401 code 5 malformed',
        ban(auth => 'Bearer ' . seg($TOKEN, 1, substr($p, 0, 8) . ' ' . substr($p, 8))),
        no401(5, $MALFORMED));
    row('JWT: "%" (a percent-encoded "-") in the header -> 401 code 5 malformed',
        ban(auth => 'Bearer ' . seg($TOKEN, 0, "$h%2D")), no401(5, $MALFORMED));
    row('JWT: a header segment of 4n+1 characters (not base64) -> 401 code 5 malformed',
        ban(auth => 'Bearer ' . seg($TOKEN, 0, $h . ('A' x ((1 - length $h) % 4)))),
        no401(5, $MALFORMED));
    row('JWT: 2 segments (header.payload) -> 401 code 5 malformed',
        ban(auth => "Bearer $h.$p"), no401(5, $MALFORMED));
    row('JWT: 4 segments (a valid token plus ".x") -> 401 code 5 malformed',
        ban(auth => "Bearer $TOKEN.x"), no401(5, $MALFORMED));
    row('JWT: empty header segment -> 401 code 5 malformed',
        ban(auth => "Bearer .$p.$s"), no401(5, $MALFORMED));
    row('JWT: empty payload segment -> 401 code 5 malformed',
        ban(auth => "Bearer $h..$s"), no401(5, $MALFORMED));
    row('JWT: empty signature segment -> 401 code 5 malformed',
        ban(auth => "Bearer $h.$p."), no401(5, $MALFORMED));
    row('JWT: only dots ".." -> 401 code 5 malformed',
        ban(auth => 'Bearer ..'), no401(5, $MALFORMED));
    row('JWT: kid "../../../../dev/null" and signed with an empty key -> 401 code 43 (kid ignored)',
        ban(auth => 'Bearer ' . jwt(pl(), key => '',
            hdr => '{"alg":"HS256","typ":"JWT","kid":"../../../../dev/null"}')), no401(43, $BADSIG));
    row('JWT: an embedded jwk with the attacker\'s key, signed with it -> 401 code 43',
        ban(auth => 'Bearer ' . jwt(pl(), key => 'attacker',
            hdr => '{"alg":"HS256","jwk":{"kty":"oct","k":"' . b64url('attacker') . '"}}')),
        no401(43, $BADSIG));
    row('JWT: signature of 42 characters -> 401 code 43',
        ban(auth => 'Bearer ' . seg($TOKEN, 2, substr($s, 0, 42))), no401(43, $BADSIG));
    row('JWT: signature of 44 characters (one extra) -> 401 code 43',
        ban(auth => "Bearer ${TOKEN}A"), no401(43, $BADSIG));
    row('JWT: signature in swapped case -> 401 code 43',
        ban(auth => 'Bearer ' . seg($TOKEN, 2, $s =~ tr/a-zA-Z/A-Za-z/r)), no401(43, $BADSIG));
    row('JWT: signed with another key -> 401 code 43',
        ban(auth => 'Bearer ' . jwt(pl(), key => 'not-the-secret')), no401(43, $BADSIG));
    row('JWT: signed with the secret plus a newline -> 401 code 43',
        ban(auth => 'Bearer ' . jwt(pl(), key => "$SECRET\n")), no401(43, $BADSIG));
    my $other = jwt(pl(), hdr => '{"alg":"HS256","typ":"JWT","kid":"k1"}');
    row('JWT: signature made over a different header, header swapped -> 401 code 43',
        ban(auth => 'Bearer ' . seg($other, 0, $h)), no401(43, $BADSIG));
    my $alice = jwt(pl(user_id => '"alice"'));
    row('JWT: payload of another token (user alice) under this signature -> 401 code 43',
        ban(auth => 'Bearer ' . seg($TOKEN, 1, (split /\./, $alice)[1])), no401(43, $BADSIG));
}

# the length limit: 4096 bytes after "Bearer "
{
    my ($at, $over);
    for my $kid (0 .. 3) {
        my $hdr = $kid ? '{"alg":"HS256","kid":"' . ('k' x $kid) . '"}' : $HDR;
        for my $n (2850 .. 3050) {
            my $tok = jwt(pl(pad => '"' . ('p' x $n) . '"'), hdr => $hdr);
            $at   //= $tok if length $tok == 4096;
            $over //= $tok if length $tok == 4097;
        }
    }
    die 'no 4096-byte token' unless $at && $over;
    row('JWT: a valid token of exactly 4096 bytes -> accepted, 201',
        ban(auth => "Bearer $at"), $OK201, up => {%UP_BAN});
    row('JWT: a valid token of 4097 bytes -> 401 code 5 malformed',
        ban(auth => "Bearer $over"), no401(5, $MALFORMED));
}

# the payload: decoded only once the signature verifies
row('JWT: signed payload that is a JSON array -> 401 code 5 malformed',
    ban(auth => 'Bearer ' . jwt('["mod-1"]')), no401(5, $MALFORMED));
row('JWT: signed payload that is not JSON -> 401 code 5 malformed',
    ban(auth => 'Bearer ' . jwt('user_id=mod-1')), no401(5, $MALFORMED));
row('JWT: signed payload with user_id twice ("alice" then "mod-1") -> 401 code 5 malformed',
    ban(auth => 'Bearer ' . jwt('{"user_id":"alice","user_id":"mod-1"}')), no401(5, $MALFORMED));
row('JWT: signed payload with invalid UTF-8 -> 401 code 5 malformed',
    ban(auth => 'Bearer ' . jwt("{\"user_id\":\"mod-1\",\"n\":\"\xed\xa0\x80\"}")),
    no401(5, $MALFORMED));

# time claims
row('JWT: exp as a string -> 401 code 5 malformed',
    ban(auth => 'Bearer ' . jwt(pl(exp => '"' . (int($NOW) + 3600) . '"'))), no401(5, $MALFORMED));
row('JWT: exp as an array -> 401 code 5 malformed',
    ban(auth => 'Bearer ' . jwt(pl(exp => '[' . (int($NOW) + 3600) . ']'))), no401(5, $MALFORMED));
row('JWT: exp as an object -> 401 code 5 malformed',
    ban(auth => 'Bearer ' . jwt(pl(exp => '{"t":1}'))), no401(5, $MALFORMED));
row('JWT: exp null -> 401 code 5 malformed',
    ban(auth => 'Bearer ' . jwt(pl(exp => 'null'))), no401(5, $MALFORMED));
row('JWT: exp true -> 401 code 5 malformed',
    ban(auth => 'Bearer ' . jwt(pl(exp => 'true'))), no401(5, $MALFORMED));
row('JWT: exp 1e400 (out of double range) -> 401 code 5 malformed',
    ban(auth => 'Bearer ' . jwt(pl(exp => '1e400'))), no401(5, $MALFORMED));
row('JWT: exp of 20 digits (integer overflow) -> 401 code 5 malformed',
    ban(auth => 'Bearer ' . jwt(pl(exp => '99999999999999999999'))), no401(5, $MALFORMED));
row('JWT: exp 1e300 (a number far ahead) -> accepted, 201 (SPEC silent; per code a number is a time)',
    ban(auth => 'Bearer ' . jwt(pl(exp => '1e300'))), $OK201, up => {%UP_BAN});
row('JWT: exp -1e300 -> 401 code 40 expired',
    ban(auth => 'Bearer ' . jwt(pl(exp => '-1e300'))), no401(40, qr/\Atoken has expired\z/));
row('JWT: exp one minute ago, as a fraction -> 401 code 40 expired',
    ban(auth => 'Bearer ' . jwt(pl(exp => (int($NOW) - 60) . '.5'))),
    no401(40, qr/\Atoken has expired\z/));
row('JWT: nbf as a string -> 401 code 5 malformed',
    ban(auth => 'Bearer ' . jwt(pl(nbf => '"0"'))), no401(5, $MALFORMED));
row('JWT: nbf 1e300 -> 401 code 41 not valid yet',
    ban(auth => 'Bearer ' . jwt(pl(nbf => '1e300'))), no401(41, qr/\Atoken is not valid yet\z/));
row('JWT: iat as a string -> 401 code 5 malformed',
    ban(auth => 'Bearer ' . jwt(pl(iat => '"now"'))), no401(5, $MALFORMED));
row('JWT: iat a day ahead -> 401 code 42',
    ban(auth => 'Bearer ' . jwt(pl(iat => int($NOW) + 86400))),
    no401(42, qr/\Atoken used before issued at \(iat\)\z/));
row('JWT: expired, and user_id a number: the user_id check comes first -> 401 code 5 invalid user_id',
    ban(auth => 'Bearer ' . jwt(pl(user_id => 7, exp => 1))), no401(5, $BADUID));

# user_id
row('JWT: no user_id (a server token) -> 401 code 5',
    ban(auth => 'Bearer ' . jwt('{"server":true}')),
    no401(5, qr/\Atoken has no user_id; server tokens are not accepted\z/));
row('JWT: user_id a number -> 401 code 5 invalid user_id claim',
    ban(auth => 'Bearer ' . jwt(pl(user_id => 12345))), no401(5, $BADUID));
row('JWT: user_id empty -> 401 code 5 invalid user_id claim',
    ban(auth => 'Bearer ' . jwt(pl(user_id => '""'))), no401(5, $BADUID));
row('JWT: user_id null -> 401 code 5 invalid user_id claim',
    ban(auth => 'Bearer ' . jwt(pl(user_id => 'null'))), no401(5, $BADUID));
row('JWT: user_id an array ["mod-1"] -> 401 code 5 invalid user_id claim',
    ban(auth => 'Bearer ' . jwt(pl(user_id => '["mod-1"]'))), no401(5, $BADUID));
row('JWT: user_id an object -> 401 code 5 invalid user_id claim',
    ban(auth => 'Bearer ' . jwt(pl(user_id => '{"id":"mod-1"}'))), no401(5, $BADUID));
row('JWT: user_id true -> 401 code 5 invalid user_id claim',
    ban(auth => 'Bearer ' . jwt(pl(user_id => 'true'))), no401(5, $BADUID));
row('JWT: user_id of 10 KB (a 13.7 KB header line) -> NGINX 400, over large_client_header_buffers',
    ban(auth => 'Bearer ' . jwt(pl(user_id => '"' . ('u' x 10240) . '"'))), [ 400, 'nginx' ]);
row('JWT: user_id of 4 KB (the token is over 4096 bytes) -> 401 code 5 malformed',
    ban(auth => 'Bearer ' . jwt(pl(user_id => '"' . ('u' x 4096) . '"'))), no401(5, $MALFORMED));
row('JWT: user_id of 256 characters -> 401 code 5 invalid user_id claim',
    ban(auth => 'Bearer ' . jwt(pl(user_id => '"' . ('u' x 256) . '"'))), no401(5, $BADUID));
row('JWT: user_id with a slash "mod/1" -> 401 code 5 invalid user_id claim',
    ban(auth => 'Bearer ' . jwt(pl(user_id => '"mod/1"'))), no401(5, $BADUID));
row('JWT: user_id "../admin" -> 401 code 5 invalid user_id claim',
    ban(auth => 'Bearer ' . jwt(pl(user_id => '"../admin"'))), no401(5, $BADUID));
row('JWT: user_id with a space -> 401 code 5 invalid user_id claim',
    ban(auth => 'Bearer ' . jwt(pl(user_id => '"mod 1"'))), no401(5, $BADUID));
row('JWT: user_id with \u0000 -> 401 code 5 malformed (the JSON decoder refuses NUL)',
    ban(auth => 'Bearer ' . jwt(pl(user_id => '"mod-1\u0000x"'))), no401(5, $MALFORMED));
row('JWT: user_id non-ASCII (raw UTF-8 "m\xc3\xb6d") -> 401 code 5 invalid user_id claim',
    ban(auth => 'Bearer ' . jwt(pl(user_id => "\"m\xc3\xb6d\""))), no401(5, $BADUID));
row('JWT: user_id non-ASCII (escaped \u00e9) -> 401 code 5 invalid user_id claim',
    ban(auth => 'Bearer ' . jwt(pl(user_id => '"mod\u00e9"'))), no401(5, $BADUID));
row('JWT: user_id with a newline -> 401 code 5 invalid user_id claim',
    ban(auth => 'Bearer ' . jwt(pl(user_id => '"mod-1\nX-Evil: 1"'))), no401(5, $BADUID));
row('JWT: user_id with "%" -> 401 code 5 invalid user_id claim',
    ban(auth => 'Bearer ' . jwt(pl(user_id => '"mod%2D1"'))), no401(5, $BADUID));
row('JWT: user_id "mod\u002d1" (an escape for "mod-1") -> decoded, accepted as mod-1 (per code), 201',
    ban(auth => 'Bearer ' . jwt(pl(user_id => '"mod\u002d1"'))), $OK201, up => {%UP_BAN});
row('JWT: user_id with a quote (JSON injection into the stamped body) -> 401 code 5',
    ban(auth => 'Bearer ' . jwt(pl(user_id => '"mod\",\"target_user_id\":\"alice"'))),
    no401(5, $BADUID));
{
    my $long = 'L' . ('o' x 253) . 'g';    # 255 characters
    row('JWT: user_id of exactly 255 characters with role admin -> accepted, stamped, 201',
        ban(auth => 'Bearer ' . jwt(pl(user_id => "\"$long\"", role => '"admin"'))), $OK201,
        up => { %UP_BAN, body => "{\"banned_by_id\":\"$long\",\"target_user_id\":\"u-2\"}" });
}

row('JWT: request_permission with "bearer <jwt>   ": upstream Authorization is exactly the bare token',
    http(POST => '/calls/default/c-1/request_permission', body => '{"permissions":["send-audio"]}',
        auth => "bearer $TOKEN   "), $OK201,
    up => { path => '/api/v2/video/call/default/c-1/request_permission', query => "api_key=$KEY",
            body => '{"permissions":["send-audio"]}', user_token => $TOKEN });

# role and call_cids claims (the policy reads them)
row('JWT: role claim an object {"admin":true} -> ignored (per code: string or array only), 403 code 17 default deny',
    ban(auth => 'Bearer ' . jwt(pl(user_id => '"rando"', role => '{"admin":true}'))),
    [ 403, 17, qr/\Adenied: no rule allows ban \(default\)\z/ ]);
row('JWT: role claim [{"admin":1}] -> 403 code 17 default deny',
    ban(auth => 'Bearer ' . jwt(pl(user_id => '"rando"', role => '[{"admin":1}]'))),
    [ 403, 17, qr/\Adenied: no rule allows ban \(default\)\z/ ]);
row('JWT: role claim "ADMIN" (other case) -> 403 code 17 default deny',
    ban(auth => 'Bearer ' . jwt(pl(user_id => '"rando"', role => '"ADMIN"'))),
    [ 403, 17, qr/\Adenied: no rule allows ban \(default\)\z/ ]);
row('JWT: role claim [null, 5, {}, "admin"] -> the string item counts (SPEC silent; per code), 201',
    ban(auth => 'Bearer ' . jwt(pl(user_id => '"rando"', role => '[null,5,{},"admin"]'))), $OK201,
    up => { %UP_BAN, body => '{"banned_by_id":"rando","target_user_id":"u-2"}' });
row('JWT: call_cids a string equal to the call -> 403 code 17 call_cids (per code: must be an array)',
    http(POST => '/calls/default/c-1/kick', body => '{"user_id":"u-2"}',
        auth => 'Bearer ' . jwt(pl(call_cids => '"default:c-1"'))),
    [ 403, 17, qr/\Adenied: the token is not valid for call default:c-1 \(call_cids\)\z/ ]);
row('JWT: call_cids an object -> 403 code 17 call_cids',
    http(POST => '/calls/default/c-1/kick', body => '{"user_id":"u-2"}',
        auth => 'Bearer ' . jwt(pl(call_cids => '{"default:c-1":true}'))),
    [ 403, 17, qr/\(call_cids\)\z/ ]);

# ---------------------------------------------------------------------------
# paths: routed on the request target as sent

row('path: %2F between prefix and action -> 400 code 4 escaped',
    http(POST => '/moderation%2Fban', body => $BAN), [ 400, 4, $ESC ]);
row('path: %2f (lower case) in a call id -> 400 code 4 escaped',
    http(POST => '/calls/default/a%2fb/kick', body => '{"user_id":"u-2"}'), [ 400, 4, $ESC ]);
row('path: %2F..%2F smuggling another action through a call id -> 400 code 4 escaped',
    http(POST => '/calls/default/c%2F..%2F..%2Fmoderation/kick', body => '{"user_id":"u-2"}'),
    [ 400, 4, $ESC ]);
row('path: /./ -> 400 code 4 dot segments',
    http(POST => '/moderation/./ban', body => $BAN), [ 400, 4, $DOT ]);
row('path: /../ back into the location -> 400 code 4 dot segments',
    http(POST => '/moderation/../moderation/ban', body => $BAN), [ 400, 4, $DOT ]);
row('path: /calls/x/../../moderation/ban (NGINX normalises into /moderation/) -> 400 code 4 dot segments',
    http(POST => '/calls/x/../../moderation/ban', body => $BAN), [ 400, 4, $DOT ]);
row('path: /moderation/ban/.. -> 400 code 4 dot segments',
    http(POST => '/moderation/ban/..', body => $BAN), [ 400, 4, $DOT ]);
row('path: /moderation/../../ban (above the root) -> NGINX 400 before any location',
    http(POST => '/moderation/../../ban', body => $BAN), [ 400, 'nginx' ]);
row('path: %2e%2e segment -> 400 code 4 escaped',
    http(POST => '/moderation/%2e%2e/moderation/ban', body => $BAN), [ 400, 4, $ESC ]);
row('path: %2E segment -> 400 code 4 escaped',
    http(POST => '/moderation/%2E/ban', body => $BAN), [ 400, 4, $ESC ]);
row('path: .%2e segment -> 400 code 4 escaped',
    http(POST => '/moderation/.%2e/moderation/ban', body => $BAN), [ 400, 4, $ESC ]);
row('path: %00 in the action -> NGINX 400 (it refuses a decoded NUL before any location)',
    http(POST => '/moderation/ban%00', body => $BAN), [ 400, 'nginx' ]);
row('path: "..." as a call type (not a dot segment) -> 400 code 4 invalid parameter',
    http(POST => '/calls/.../c-1/kick', body => '{"user_id":"u-2"}'), [ 400, 4, $PARAM ]);
row('path: a backslash inside a segment -> 400 code 4 escaped',
    http(POST => '/moderation/\\ban', body => $BAN), [ 400, 4, $ESC ]);
row('path: a backslash instead of the slash after the prefix: no stream_mod location -> NGINX 404',
    http(POST => '/moderation\\ban', body => $BAN), [ 404, 'nginx' ]);
row('path: double slash at the start -> 400 code 4 empty segment',
    http(POST => '//moderation/ban', body => $BAN), [ 400, 4, $EMPTY ]);
row('path: double slash in the middle -> 400 code 4 empty segment',
    http(POST => '/moderation//ban', body => $BAN), [ 400, 4, $EMPTY ]);
row('path: double slash at the end -> 400 code 4 empty segment',
    http(POST => '/moderation/ban//', body => $BAN), [ 400, 4, $EMPTY ]);
row('path: trailing slash -> 404 code 16',
    http(POST => '/moderation/ban/', body => $BAN), [ 404, 16, $NF ]);
row('path: trailing slash on a call action -> 404 code 16',
    http(POST => '/calls/default/c-1/kick/', body => '{"user_id":"u-2"}'), [ 404, 16, $NF ]);
row('path: a 65-character call id -> 400 code 4 invalid parameter',
    http(POST => '/calls/default/' . ('c' x 65) . '/kick', body => '{"user_id":"u-2"}'),
    [ 400, 4, $PARAM ]);
row('path: a 5000-character call id -> 400 code 4 invalid parameter',
    http(POST => '/calls/default/' . ('c' x 5000) . '/kick', body => '{"user_id":"u-2"}'),
    [ 400, 4, $PARAM ]);
row('path: a 5000-character user id in deactivate -> 400 code 4 invalid parameter',
    http(POST => '/moderation/users/' . ('u' x 5000) . '/deactivate', body => '{}'),
    [ 400, 4, $PARAM ]);
row('path: a 9000-character call id (request line over 8k) -> NGINX 414',
    http(POST => '/calls/default/' . ('c' x 9000) . '/kick', body => '{"user_id":"u-2"}'),
    [ 414, 'nginx' ]);
row('path: non-ASCII bytes in a call type -> 400 code 4 invalid parameter',
    http(POST => "/calls/d\xc3\xa9fault/c-1/kick", body => '{"user_id":"u-2"}'), [ 400, 4, $PARAM ]);
row('path: non-ASCII bytes in the action name -> 404 code 16',
    http(POST => "/moderation/b\xc3\xa4n", body => $BAN), [ 404, 16, $NF ]);
row('path: a raw 0xff byte in a user id -> 400 code 4 invalid parameter',
    http(POST => "/moderation/users/u\xff/deactivate", body => '{}'), [ 400, 4, $PARAM ]);
row('path: ";x=1" matrix parameter on the action -> 404 code 16',
    http(POST => '/moderation/ban;x=1', body => $BAN), [ 404, 16, $NF ]);
row('path: ";" matrix parameter on a call type -> 400 code 4 invalid parameter',
    http(POST => '/calls/default;x=1/c-1/kick', body => '{"user_id":"u-2"}'), [ 400, 4, $PARAM ]);
row('path: ";jsessionid" on a user id -> 400 code 4 invalid parameter',
    http(POST => '/moderation/users/u-2;jsessionid=1/deactivate', body => '{}'), [ 400, 4, $PARAM ]);
row('path: "#" fragment sent on the wire -> 400 code 4 escaped',
    http(POST => '/moderation/ban#frag', body => $BAN), [ 400, 4, $ESC ]);
row('path: action in another case (/moderation/Ban) -> 404 code 16',
    http(POST => '/moderation/Ban', body => $BAN), [ 404, 16, $NF ]);
row('path: prefix in another case (/MODERATION/ban): no stream_mod location -> NGINX 404, nothing proxied',
    http(POST => '/MODERATION/ban', body => $BAN), [ 404, 'nginx' ]);
row('path: 9 segments -> 404 code 16',
    http(POST => '/moderation/a/b/c/d/e/f/g/h', body => $BAN), [ 404, 16, $NF ]);
row('path: unknown HTTP method "BAN" on ban -> 405 code 4 with Allow',
    http(BAN => '/moderation/ban', body => $BAN),
    [ 405, 4, qr/\Amethod BAN is not allowed here\z/ ], allow => 'POST, DELETE');
row('path: TRACE -> NGINX 405 before any location',
    http(TRACE => '/moderation/ban'), [ 405, 'nginx' ]);
row('path: lower-case method "post" -> NGINX 400',
    http(post => '/moderation/ban', body => $BAN), [ 400, 'nginx' ]);
row('path: request target without a leading slash -> NGINX 400',
    http(POST => 'moderation/ban', body => $BAN), [ 400, 'nginx' ]);
row('path: a raw NUL in the request target -> NGINX 400',
    http(POST => "/moderation/ban\0", body => $BAN), [ 400, 'nginx' ]);
row('path: a TAB in the request line -> NGINX 400',
    "POST\t/moderation/ban HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", [ 400, 'nginx' ]);
row('path: HTTP/2.0 on a plain HTTP/1 connection -> NGINX 505',
    http(POST => '/moderation/ban', body => $BAN, version => '2.0'), [ 505, 'nginx' ]);
row('path: absolute-form "POST http://evil/moderation/ban" -> routed on its path part (SPEC silent; per NGINX and code): 201, Host evil not forwarded',
    http(POST => 'http://evil/moderation/ban', body => $BAN), $OK201,
    up => { %UP_BAN, host_not => 'evil' });
row('path: absolute-form with a dot segment "http://evil/moderation/./ban" -> 400 code 4 dot segments',
    http(POST => 'http://evil/moderation/./ban', body => $BAN), [ 400, 4, $DOT ]);

# query: dropped unless the operation defines it
row('query: ban?api_key=evil&target_user_id=alice -> 201, upstream query only the configured api_key',
    http(POST => '/moderation/ban?api_key=evil&target_user_id=alice', body => $BAN), $OK201,
    up => {%UP_BAN});
row('query: ban?api_key=evil&api_key=evil2&banned_by_id=alice -> 201, query dropped, caller stamped',
    http(POST => '/moderation/ban?api_key=evil&api_key=evil2&banned_by_id=alice', body => $BAN),
    $OK201, up => {%UP_BAN});
row('query: ban?x=%26api_key%3Devil (encoded smuggling) -> 201, query dropped',
    http(POST => '/moderation/ban?x=%26api_key%3Devil', body => $BAN), $OK201, up => {%UP_BAN});
row('query: ban?target_user_id=alice with no target in the body -> 400 code 4 required (query ignored)',
    http(POST => '/moderation/ban?target_user_id=alice', body => '{}'),
    [ 400, 4, qr/\Atarget_user_id is a required field\z/ ]);
row('query: ban?#x ("#" after "?") -> 201, query dropped (per code: only the path is checked for "#")',
    http(POST => '/moderation/ban?#x', body => $BAN), $OK201, up => {%UP_BAN});
row('query: unban?target_user_id=u-2&api_key=evil -> 201, api_key once',
    http(POST => '/moderation/unban?target_user_id=u-2&api_key=evil'), $OK201,
    up => { path => '/api/v2/moderation/unban', query => "api_key=$KEY&target_user_id=u-2",
            body => '{"unbanned_by_id":"mod-1"}' });
row('query: unban?target_user_id=u-2&target_user_id (no "=") -> 201, only u-2 upstream (per code: a name without "=" is dropped)',
    http(POST => '/moderation/unban?target_user_id=u-2&target_user_id'), $OK201,
    up => { path => '/api/v2/moderation/unban', query => "api_key=$KEY&target_user_id=u-2",
            body => '{"unbanned_by_id":"mod-1"}' });
row('query: unban with target_user_id twice -> 400 code 4 given twice',
    http(POST => '/moderation/unban?target_user_id=u-2&target_user_id=alice'),
    [ 400, 4, qr/\Aquery parameter "target_user_id" given twice\z/ ]);
row('query: unban?target_user_id=u-2%26api_key=evil -> 400 code 4 invalid value',
    http(POST => '/moderation/unban?target_user_id=u-2%26api_key=evil'),
    [ 400, 4, qr/\Ainvalid value for query parameter "target_user_id"\z/ ]);
row('query: unban?channel_cid=a;target_user_id=alice (";" separator) -> 400 code 4 invalid value',
    http(POST => '/moderation/unban?target_user_id=u-2&channel_cid=a;target_user_id=alice'),
    [ 400, 4, qr/\Ainvalid value for query parameter "channel_cid"\z/ ]);
row('query: unban?target_user_id=u-2#alice -> 400 code 4 invalid value',
    http(POST => '/moderation/unban?target_user_id=u-2#alice'),
    [ 400, 4, qr/\Ainvalid value for query parameter "target_user_id"\z/ ]);
row('query: blocked?user_id=alice -> 403 code 17 acting user mismatch',
    http(GET => '/moderation/blocked?user_id=alice'),
    [ 403, 17, qr/\Aacting user mismatch: user_id must be the caller\z/ ]);
row('query: blocked?api_key=evil&user_id=mod-1 -> 200, query rebuilt',
    http(GET => '/moderation/blocked?api_key=evil&user_id=mod-1'), [ 200, undef, undef ],
    up => { method => 'GET', path => '/api/v2/users/block', query => "api_key=$KEY&user_id=mod-1",
            body => '' });

# ---------------------------------------------------------------------------
# bodies (ban unless said)

row('body: duplicate key at depth 1 -> 400 code 4 duplicate',
    ban(body => '{"target_user_id":"u-2","reason":"a","reason":"b"}'), [ 400, 4, $DUP ]);
row('body: duplicate key at depth 2 -> 400 code 4 duplicate',
    ban(body => '{"target_user_id":"u-2","x":{"a":1,"a":2}}'), [ 400, 4, $DUP ]);
row('body: duplicate key at depth 5 -> 400 code 4 duplicate',
    ban(body => '{"target_user_id":"u-2","a":{"b":{"c":{"d":{"e":1,"e":1}}}}}'), [ 400, 4, $DUP ]);
row('body: target_user_id and target\u005fuser_id (the same key, escaped) -> 400 code 4 duplicate',
    ban(body => '{"target_user_id":"u-2","target\u005fuser_id":"alice"}'), [ 400, 4, $DUP ]);
row('body: 10 000 nested arrays -> 400 code 4 invalid JSON',
    ban(body => '{"target_user_id":"u-2","x":' . ('[' x 10000) . (']' x 10000) . '}'),
    [ 400, 4, $BADJSON ]);
row('body: 10 000 nested objects -> 400 code 4 invalid JSON',
    ban(body => '{"target_user_id":"u-2","x":' . ('{"a":' x 10000) . '1' . ('}' x 10000) . '}'),
    [ 400, 4, $BADJSON ]);
for my $c (
    [ 'overlong "/" (c0 af)',               "\xc0\xaf" ],
    [ 'overlong 3-byte (e0 80 af)',         "\xe0\x80\xaf" ],
    [ 'UTF-16 surrogate (ed a0 80)',        "\xed\xa0\x80" ],
    [ 'truncated 3-byte sequence (e2 82)',  "\xe2\x82" ],
    [ 'lone continuation byte (80)',        "\x80" ],
    [ 'beyond U+10FFFF (f4 90 80 80)',      "\xf4\x90\x80\x80" ],
    [ 'byte f5',                            "\xf5\x80\x80\x80" ],
    )
{
    row("body: invalid UTF-8 in a string, $c->[0] -> 400 code 4 invalid JSON",
        ban(body => "{\"target_user_id\":\"u-2\",\"reason\":\"a$c->[1]b\"}"), [ 400, 4, $BADJSON ]);
}
row('body: invalid UTF-8 in target_user_id -> 400 code 4 invalid JSON',
    ban(body => "{\"target_user_id\":\"u-2\xc0\xaf\"}"), [ 400, 4, $BADJSON ]);
row('body: invalid UTF-8 in a key -> 400 code 4 invalid JSON',
    ban(body => "{\"target_user_id\":\"u-2\",\"k\xff\":1}"), [ 400, 4, $BADJSON ]);
row('body: truncated UTF-8 as the very last byte -> 400 code 4 invalid JSON',
    ban(body => "{\"target_user_id\":\"u-2\"}\xc3"), [ 400, 4, $BADJSON ]);
row('body: escaped lone high surrogate \ud800 -> 400 code 4 invalid JSON',
    ban(body => '{"target_user_id":"u-2","reason":"\ud800"}'), [ 400, 4, $BADJSON ]);
row('body: escaped lone low surrogate \udc00 -> 400 code 4 invalid JSON',
    ban(body => '{"target_user_id":"u-2","reason":"\udc00x"}'), [ 400, 4, $BADJSON ]);
row('body: raw NUL inside a string -> 400 code 4 invalid JSON',
    ban(body => "{\"target_user_id\":\"u-2\",\"reason\":\"a\0b\"}"), [ 400, 4, $BADJSON ]);
row('body: raw NUL between tokens -> 400 code 4 invalid JSON',
    ban(body => "{\"target_user_id\":\"u-2\",\0\"reason\":\"a\"}"), [ 400, 4, $BADJSON ]);
row('body: escaped \u0000 in target_user_id -> 400 code 4 invalid JSON',
    ban(body => '{"target_user_id":"u-2\u0000alice"}'), [ 400, 4, $BADJSON ]);
row('body: escaped \u0000 in a key -> 400 code 4 invalid JSON',
    ban(body => '{"target_user_id":"u-2","a\u0000":1}'), [ 400, 4, $BADJSON ]);
row('body: 1e999 in an unknown field -> 400 code 4 invalid JSON',
    ban(body => '{"target_user_id":"u-2","n":1e999}'), [ 400, 4, $BADJSON ]);
row('body: timeout 1e999 -> 400 code 4 invalid JSON',
    ban(body => '{"target_user_id":"u-2","timeout":1e999}'), [ 400, 4, $BADJSON ]);
row('body: timeout of 20 digits -> 400 code 4 invalid JSON',
    ban(body => '{"target_user_id":"u-2","timeout":12345678901234567890}'), [ 400, 4, $BADJSON ]);
row('body: timeout 9223372036854775808 (int64 max + 1) -> 400 code 4 invalid JSON',
    ban(body => '{"target_user_id":"u-2","timeout":9223372036854775808}'), [ 400, 4, $BADJSON ]);
row('body: timeout -1 -> 400 code 4 wrong type',
    ban(body => '{"target_user_id":"u-2","timeout":-1}'),
    [ 400, 4, qr/\Atimeout has the wrong type\z/ ]);
row('body: timeout -0 -> an integer zero per code: 201, "-0" forwarded byte for byte',
    ban(body => '{"target_user_id":"u-2","timeout":-0}'), $OK201,
    up => { %UP_BAN, body => '{"banned_by_id":"mod-1","target_user_id":"u-2","timeout":-0}' });
row('body: timeout -0.0 (a real) -> 400 code 4 wrong type',
    ban(body => '{"target_user_id":"u-2","timeout":-0.0}'),
    [ 400, 4, qr/\Atimeout has the wrong type\z/ ]);
row('body: timeout 1e1 (a real) -> 400 code 4 wrong type',
    ban(body => '{"target_user_id":"u-2","timeout":1e1}'),
    [ 400, 4, qr/\Atimeout has the wrong type\z/ ]);
row('body: timeout "5" (a string) -> 400 code 4 wrong type',
    ban(body => '{"target_user_id":"u-2","timeout":"5"}'),
    [ 400, 4, qr/\Atimeout has the wrong type\z/ ]);
for my $lit (qw(NaN Infinity -Infinity)) {
    row("body: $lit literal -> 400 code 4 invalid JSON",
        ban(body => "{\"target_user_id\":\"u-2\",\"timeout\":$lit}"), [ 400, 4, $BADJSON ]);
}
row('body: a UTF-8 BOM before the object -> 400 code 4 invalid JSON',
    ban(body => "\xef\xbb\xbf$BAN"), [ 400, 4, $BADJSON ]);
row('body: a /* comment */ -> 400 code 4 invalid JSON',
    ban(body => '{/* c */"target_user_id":"u-2"}'), [ 400, 4, $BADJSON ]);
row('body: a // comment after the object -> 400 code 4 invalid JSON',
    ban(body => "$BAN // c"), [ 400, 4, $BADJSON ]);
row('body: single quotes -> 400 code 4 invalid JSON',
    ban(body => "{'target_user_id':'u-2'}"), [ 400, 4, $BADJSON ]);
row('body: trailing comma in the object -> 400 code 4 invalid JSON',
    ban(body => '{"target_user_id":"u-2",}'), [ 400, 4, $BADJSON ]);
row('body: trailing comma in an array -> 400 code 4 invalid JSON',
    http(POST => '/moderation/unmute', body => '{"target_ids":["u-2",]}'), [ 400, 4, $BADJSON ]);
row('body: unquoted key -> 400 code 4 invalid JSON',
    ban(body => '{target_user_id:"u-2"}'), [ 400, 4, $BADJSON ]);
row('body: a second object after the first -> 400 code 4 invalid JSON',
    ban(body => "$BAN\n{\"target_user_id\":\"alice\"}"), [ 400, 4, $BADJSON ]);
for my $c ([ 'an array', '[' . $BAN . ']' ], [ 'a string', '"u-2"' ], [ 'a number', '42' ],
           [ 'true', 'true' ], [ 'false', 'false' ], [ 'null', 'null' ])
{
    row("body: top-level $c->[0] -> 400 code 4 not an object",
        ban(body => $c->[1]), [ 400, 4, $NOTOBJ ]);
}
row('body: whitespace only -> 400 code 4 invalid JSON (per code: only an empty body is {})',
    ban(body => "  \r\n\t "), [ 400, 4, $BADJSON ]);
row('body: empty object with whitespace on ban -> 400 code 4 target_user_id required',
    ban(body => " \n{ \t}\n "), [ 400, 4, qr/\Atarget_user_id is a required field\z/ ]);
row('body: empty object with whitespace on reactivate_user -> 201, actor stamped inside the braces',
    http(POST => '/moderation/users/u-2/reactivate', body => " \n{ \t}\n "), $OK201,
    up => { path => '/api/v2/users/u-2/reactivate', query => "api_key=$KEY",
            body => " \n{\"created_by_id\":\"mod-1\" \t}\n " });
row('body: target_user_id an array -> 400 code 4 wrong type',
    ban(body => '{"target_user_id":["u-2"]}'), [ 400, 4, qr/\Atarget_user_id has the wrong type\z/ ]);
row('body: target_user_id "u/2" -> 400 code 4 not a valid user id',
    ban(body => '{"target_user_id":"u/2"}'), [ 400, 4, qr/\Atarget_user_id is not a valid user id\z/ ]);
row('body: target_user_id with an escaped newline -> 400 code 4 not a valid user id',
    ban(body => '{"target_user_id":"u-2\n"}'), [ 400, 4, qr/\Atarget_user_id is not a valid user id\z/ ]);
row('body: banned_by_id spoofed through an escape ("mod\u002d1" is "mod-1") -> 201, kept as sent',
    ban(body => '{"target_user_id":"u-2","banned_by_id":"mod\u002d1"}'), $OK201,
    up => { %UP_BAN, body => '{"target_user_id":"u-2","banned_by_id":"mod\u002d1"}' });
row('body: banned_by_id "alice" through escapes -> 403 code 17 acting user mismatch',
    ban(body => '{"target_user_id":"u-2","banned_by_id":"\u0061lice"}'),
    [ 403, 17, qr/\Aacting user mismatch: banned_by_id must be the caller\z/ ]);

# field names Stream's decoder matches without regard to case
row('body: GET /moderation/blocked with a chunked JSON body naming alice -> 400 code 4 takes no request body',
    http(GET => '/moderation/blocked', te => 'chunked', body => chunked('{"user_id":"alice"}')),
    [ 400, 4, qr/\Ablocked_users takes no request body\z/ ]);
row('body: key TARGET_USER_ID -> 400 code 4 spelled exactly',
    ban(body => '{"TARGET_USER_ID":"u-2"}'),
    [ 400, 4, qr/\Afield name must be spelled exactly "target_user_id"\z/ ]);
row('body: key Banned_By_Id next to the real target -> 400 code 4 spelled exactly',
    ban(body => '{"target_user_id":"u-2","Banned_By_Id":"alice"}'),
    [ 400, 4, qr/\Afield name must be spelled exactly "banned_by_id"\z/ ]);
row('body: kicked_by_id with a Kelvin sign (U+212A) -> 400 code 4 spelled exactly',
    http(POST => '/calls/default/c-1/kick', body => "{\"user_id\":\"u-2\",\"\xe2\x84\xaaicked_by_id\":\"alice\"}"),
    [ 400, 4, qr/\Afield name must be spelled exactly "kicked_by_id"\z/ ]);
row('body: target_u\x{17f}er_id with a long s (U+017F) -> 400 code 4 spelled exactly',
    ban(body => "{\"target_user_id\":\"u-2\",\"target_u\xc5\xbfer_id\":\"alice\"}"),
    [ 400, 4, qr/\Afield name must be spelled exactly "target_user_id"\z/ ]);
row('body: long s written as the escape \u017f -> 400 code 4 spelled exactly',
    ban(body => '{"target_user_id":"u-2","target_u\u017fer_id":"alice"}'),
    [ 400, 4, qr/\Afield name must be spelled exactly "target_user_id"\z/ ]);
row('body: Kelvin sign written as the escape \u212a in blocked_user_id -> 400 code 4',
    http(POST => '/moderation/block', body => '{"blocked_user_id":"u-2","bloc\u212aed_user_id":"alice"}'),
    [ 400, 4, qr/\Afield name must be spelled exactly "blocked_user_id"\z/ ]);
row('body: two unknown keys equal ignoring case ("note", "NOTE") -> 400 code 4 differ only in case',
    ban(body => '{"target_user_id":"u-2","note":1,"NOTE":2}'),
    [ 400, 4, qr/\Atwo fields differ only in case\z/ ]);

# 50 000 keys, on /moderation/mute (stream_mod_max_body_size 2m)
{
    my $keys = join '', map { sprintf ',"k%05d":0', $_ } 0 .. 49999;
    my $body = '{"target_ids":["u-2"]' . $keys . '}';
    row('body: 50 000 keys (' . length($body) . ' bytes, limit raised to 2m) -> 201, byte for byte',
        http(POST => '/moderation/mute', body => $body), $OK201,
        up => { path => '/api/v2/moderation/mute', query => "api_key=$KEY",
                body => '{"user_id":"mod-1",' . substr($body, 1) });
    row('body: 50 000 keys, the last one "K00000" folding onto "k00000" -> 400 code 4 differ only in case',
        http(POST => '/moderation/mute', body => '{"target_ids":["u-2"]' . $keys . ',"K00000":1}'),
        [ 400, 4, qr/\Atwo fields differ only in case\z/ ]);
    row('body: 50 000 keys on ban at the default 64k limit -> 413 code 22',
        ban(body => '{"target_user_id":"u-2"' . $keys . '}'),
        [ 413, 22, qr/\Arequest body is larger than 65536 bytes\z/ ]);
}

# chunked
row('chunked: valid body in 3 chunks -> 201, sent upstream with a Content-Length',
    ban(te => 'chunked', body => chunked('{"target_', 'user_id":', '"u-2"}')), $OK201,
    up => { %UP_BAN, not_chunked => 1 });
row('chunked: "Transfer-Encoding: Chunked" (other case) -> 201',
    ban(te => 'Chunked', body => chunked($BAN)), $OK201, up => {%UP_BAN});
row('chunked: a chunk extension ";ext=1" -> 201',
    ban(te => 'chunked', body => sprintf("%x;ext=1\r\n%s\r\n0\r\n\r\n", length $BAN, $BAN)), $OK201,
    up => {%UP_BAN});
row('chunked: trailer fields after the last chunk -> 201, trailers not forwarded',
    ban(te => 'chunked', body => sprintf("%x\r\n%s\r\n0\r\nX-Trailer: evil\r\n\r\n", length $BAN, $BAN)),
    $OK201, up => { %UP_BAN, no_header => 'x-trailer' });
row('chunked: one chunk per byte (24 chunks) -> 201',
    ban(te => 'chunked', body => chunked(split //, $BAN)), $OK201, up => {%UP_BAN});
row('chunked: with Expect: 100-continue -> 100 Continue, then 201',
    ban(te => 'chunked', body => chunked($BAN), headers => [ Expect => '100-continue' ]), $OK201,
    up => {%UP_BAN}, how => 'expect100', continue => 1);
row('chunked: a non-hex chunk size "zz" -> 400 code 4 bad request',
    ban(te => 'chunked', body => "zz\r\n$BAN\r\n0\r\n\r\n"), [ 400, 4, qr/\Abad request\z/ ]);
row('chunked: a negative chunk size "-1" -> 400 code 4 bad request',
    ban(te => 'chunked', body => "-1\r\n$BAN\r\n0\r\n\r\n"), [ 400, 4, qr/\Abad request\z/ ]);
row('chunked: chunk size "0x18" -> 400 code 4 bad request',
    ban(te => 'chunked', body => "0x18\r\n$BAN\r\n0\r\n\r\n"), [ 400, 4, qr/\Abad request\z/ ]);
row('chunked: more data than the chunk size, no CRLF -> 400 code 4 bad request',
    ban(te => 'chunked', body => "5\r\n$BAN\r\n0\r\n\r\n"), [ 400, 4, qr/\Abad request\z/ ]);
row('chunked: chunk size of 20 hex digits (overflow) -> 400 code 4 bad request',
    ban(te => 'chunked', body => ('f' x 20) . "\r\n$BAN\r\n0\r\n\r\n"), [ 400, 4, qr/\Abad request\z/ ]);
row('chunked: a 2 GB chunk announced (over client_max_body_size) -> 413 code 22',
    ban(te => 'chunked', body => "7fffffff\r\n$BAN"), [ 413, 22, qr/\Arequest body is too large\z/ ]);
row('chunked: 70 000 bytes in chunks, over the 64k limit -> 413 code 22',
    ban(te => 'chunked', body => chunked('{"target_user_id":"u-2","x":"', ('x' x 35000), ('x' x 35000), '"}')),
    [ 413, 22, qr/\Arequest body is larger than 65536 bytes\z/ ]);
row('chunked: invalid JSON in valid chunks -> 400 code 4 invalid JSON',
    ban(te => 'chunked', body => chunked('{"target_user_id":', '"u-2",}')), [ 400, 4, $BADJSON ]);
row('chunked: duplicate key split across chunks -> 400 code 4 duplicate',
    ban(te => 'chunked', body => chunked('{"target_user_id":"u-2","target_', 'user_id":"alice"}')),
    [ 400, 4, $DUP ]);
row('chunked: the client closes before the last chunk -> no response, nothing upstream',
    ban(te => 'chunked', body => sprintf("%x\r\n%s\r\n", length $BAN, $BAN)), [ 'closed' ],
    how => 'half_close', log_status => 400);
row('chunked: Transfer-Encoding chunked on HTTP/1.0 -> NGINX 400',
    ban(te => 'chunked', body => chunked($BAN), version => '1.0'), [ 400, 'nginx' ]);
row('chunked: "Transfer-Encoding: gzip" -> NGINX 501',
    ban(te => 'gzip', body => $BAN), [ 501, 'nginx' ]);
row('chunked: "Transfer-Encoding: gzip, chunked" -> NGINX 501',
    ban(te => 'gzip, chunked', body => chunked($BAN)), [ 501, 'nginx' ]);
row('chunked: Content-Length and Transfer-Encoding both -> NGINX 400',
    ban(te => 'chunked', body => chunked($BAN), headers => [ 'Content-Length' => length $BAN ]),
    [ 400, 'nginx' ]);

# Expect: 100-continue (the head first; the body only after "100 Continue")
row('expect: 100-continue with a good token and body -> 100 Continue, then 201',
    ban(headers => [ Expect => '100-continue' ]), $OK201, up => {%UP_BAN}, how => 'expect100',
    continue => 1);
row('expect: 100-continue with a forged token -> 401 code 43, no 100 Continue, body never read',
    ban(headers => [ Expect => '100-continue' ], auth => 'Bearer ' . jwt(pl(), key => 'forged')),
    no401(43, $BADSIG), how => 'expect100', continue => 0);
row('expect: 100-continue without a token -> 401 code 5, no 100 Continue',
    ban(headers => [ Expect => '100-continue' ], auth => undef),
    no401(5, qr/\Amissing user token\z/), how => 'expect100', continue => 0);
row('expect: 100-continue on a dot-segment path -> 400 code 4, no 100 Continue',
    http(POST => '/moderation/./ban', body => $BAN, headers => [ Expect => '100-continue' ]),
    [ 400, 4, $DOT ], how => 'expect100', continue => 0);
row('expect: 100-continue with Content-Length over the 64k limit -> 413 code 22, no 100 Continue',
    ban(headers => [ Expect => '100-continue' ], cl => 70000, body => ''),
    [ 413, 22, qr/\Arequest body is larger than 65536 bytes\z/ ], how => 'expect100', continue => 0);

# bodies spooled to a temporary file (client_body_buffer_size 1k on /moderation/unblock)
{
    my $note = join '', map { sprintf "%05d.", $_ } 1 .. 5000;    # 30 000 bytes
    my $good = '{"blocked_user_id":"u-2","note":"' . $note . '"}';
    row('spooled: a valid 30 KB body written to a temporary file -> 201, upstream byte for byte',
        http(POST => '/moderation/unblock', body => $good), $OK201,
        up => { path => '/api/v2/users/unblock', query => "api_key=$KEY",
                body => '{"user_id":"mod-1",' . substr($good, 1) }, spooled => 1);
    row('spooled: 30 KB body with a duplicate blocked_user_id at the very end -> 400 code 4 duplicate',
        http(POST => '/moderation/unblock',
            body => '{"blocked_user_id":"u-2","note":"' . $note . '","blocked_user_id":"alice"}'),
        [ 400, 4, $DUP ]);
    row('spooled: 30 KB body with a trailing comma at the very end -> 400 code 4 invalid JSON',
        http(POST => '/moderation/unblock', body => '{"blocked_user_id":"u-2","note":"' . $note . '",}'),
        [ 400, 4, $BADJSON ]);
    row('spooled: 30 KB body with invalid UTF-8 in the last string -> 400 code 4 invalid JSON',
        http(POST => '/moderation/unblock',
            body => '{"blocked_user_id":"u-2","note":"' . $note . "\xed\xa0\x80\"}"),
        [ 400, 4, $BADJSON ]);
    row('spooled: 30 KB body with user_id of someone else at the end -> 403 code 17',
        http(POST => '/moderation/unblock',
            body => '{"blocked_user_id":"u-2","note":"' . $note . '","user_id":"alice"}'),
        [ 403, 17, qr/\Aacting user mismatch: user_id must be the caller\z/ ]);
    row('spooled: 30 KB chunked body -> 201, upstream byte for byte',
        http(POST => '/moderation/unblock', te => 'chunked',
            body => chunked(substr($good, 0, 10000), substr($good, 10000, 10000), substr($good, 20000))),
        $OK201, up => { path => '/api/v2/users/unblock', query => "api_key=$KEY",
                        body => '{"user_id":"mod-1",' . substr($good, 1) });
}

# Content-Length that does not match the body
row('length: Content-Length 100, 24 bytes sent, then the client closes -> no response, nothing upstream',
    ban(cl => 100), [ 'closed' ], how => 'half_close', log_status => 400);
row('length: Content-Length 100, 24 bytes sent, the client waits -> closed after client_body_timeout 1s',
    ban(cl => 100), [ 'closed' ], how => 'stall', log_status => 408, min_time => 0.9);
row('length: Content-Length shorter than the body (JSON cut) -> 400 code 4 invalid JSON',
    ban(cl => 10), [ 400, 4, $BADJSON ]);
row('length: Content-Length -1 -> NGINX 400',
    ban(cl => -1), [ 400, 'nginx' ]);
row('length: Content-Length "24, 24" -> NGINX 400',
    ban(cl => '24, 24'), [ 400, 'nginx' ]);
row('length: two Content-Length headers -> NGINX 400',
    ban(headers => [ 'Content-Length' => 24 ]), [ 400, 'nginx' ]);
row('length: Content-Length of 20 digits -> NGINX 400',
    ban(cl => '99999999999999999999'), [ 400, 'nginx' ]);
row('length: Content-Length 2000000, over client_max_body_size -> 413 code 22 (APIError, not HTML)',
    ban(cl => 2000000, body => ''), [ 413, 22, qr/\Arequest body is too large\z/ ]);
row('length: Content-Length 70000, over the 64k gate limit -> 413 code 22',
    ban(cl => 70000, body => ''), [ 413, 22, qr/\Arequest body is larger than 65536 bytes\z/ ]);
row('length: a pipelined second request without a token after a valid one -> 201 then 401, one upstream request',
    ban(keepalive => 1) . ban(auth => undef, body => '{"target_user_id":"alice"}'),
    [ 'pipeline', [ 201, 401 ] ], up => {%UP_BAN}, how => 'pipeline');
{
    # a refused request whose body is itself a complete, valid request
    # (ban alice): NGINX must discard it, never parse it as a request
    my $inner = ban(keepalive => 1, body => '{"target_user_id":"alice"}');
    my $last  = ban();
    row('smuggling: 401 (no token) with a body that is a valid ban of alice, then a real ban -> 401, 201; only u-2 upstream',
        ban(auth => undef, keepalive => 1, body => $inner) . $last,
        [ 'pipeline', [ 401, 201 ] ], up => {%UP_BAN}, how => 'pipeline');
    row('smuggling: 415 (text/plain) with a chunked body holding a valid ban of alice, then a real ban -> 415, 201',
        ban(ct => 'text/plain', te => 'chunked', keepalive => 1, body => chunked($inner)) . $last,
        [ 'pipeline', [ 415, 201 ] ], up => {%UP_BAN}, how => 'pipeline');
    # after a 400 or 413 NGINX drops keep-alive: the connection closes, so
    # neither the body nor the pipelined request is ever parsed
    row('smuggling: 413 (Content-Length 70000 over the limit) whose body starts with a ban of alice, then a real ban -> 413 and close; nothing upstream',
        ban(keepalive => 1, body => $inner . (' ' x (70000 - length $inner))) . $last,
        [ 'pipeline', [413] ], how => 'pipeline');
    row('smuggling: 400 (dot segment) with a body holding a ban of alice, then a real ban -> 400 and close; nothing upstream',
        http(POST => '/moderation/./ban', keepalive => 1, body => $inner) . $last,
        [ 'pipeline', [400] ], how => 'pipeline');
}

# ---------------------------------------------------------------------------
# headers

row('header: two Authorization headers -> NGINX 400 before any location',
    ban(headers => [ Authorization => "Bearer $TOKEN" ]), [ 400, 'nginx' ]);
row('header: Authorization and "authorization" -> NGINX 400',
    ban(headers => [ authorization => 'Bearer ' . jwt(pl(user_id => '"alice"')) ]), [ 400, 'nginx' ]);
row('header: a bare LF in a header value smuggling a second Authorization -> NGINX 400 (duplicate)',
    ban(headers => [ 'X-Note' => "hi\nAuthorization: Bearer $TOKEN" ]), [ 400, 'nginx' ]);
row('header: a bare LF smuggling a forged Authorization (no other) -> 401 code 43',
    ban(auth => undef, headers => [ 'X-Note' => "hi\nAuthorization: Bearer " . jwt(pl(), key => 'x') ]),
    no401(43, $BADSIG));
row('header: a raw CR inside the Authorization value -> NGINX 400',
    ban(auth => "Bearer $TOKEN\rX-Evil: 1"), [ 400, 'nginx' ]);
row('header: a raw CR inside another header value -> NGINX 400',
    ban(headers => [ 'X-Note' => "a\rb" ]), [ 400, 'nginx' ]);
row('header: obs-fold continuation line after Authorization -> NGINX 400',
    ban(auth => "Bearer $TOKEN\r\n  more"), [ 400, 'nginx' ]);
row('header: obs-fold with a TAB -> NGINX 400',
    ban(headers => [ 'X-Note' => "a\r\n\tb" ]), [ 400, 'nginx' ]);
row('header: a raw NUL in a header value -> NGINX 400',
    ban(headers => [ 'X-Note' => "a\0b" ]), [ 400, 'nginx' ]);
row('header: a space inside a header name -> NGINX 400',
    ban(headers => [ 'X Note' => 'a' ]), [ 400, 'nginx' ]);
row('header: a 20 KB header -> NGINX 400 (494 in the log)',
    ban(headers => [ 'X-Big' => 'b' x 20480 ]), [ 400, 'nginx' ]);
row('header: a 20 KB Authorization -> NGINX 400',
    ban(auth => 'Bearer ' . ('a' x 20480)), [ 400, 'nginx' ]);
row('header: a 5000-byte Authorization (fits NGINX buffers) -> 401 code 5 malformed',
    ban(auth => 'Bearer ' . ('a' x 5000)), no401(5, $MALFORMED));
row('header: HTTP/1.1 without Host -> NGINX 400',
    ban(no_host => 1), [ 400, 'nginx' ]);
row('header: two Host headers -> NGINX 400',
    ban(headers => [ Host => 'evil' ]), [ 400, 'nginx' ]);
row('header: Host "../evil" -> NGINX 400',
    ban(host => '../evil'), [ 400, 'nginx' ]);
row('header: HTTP/1.0 without Host -> 201',
    ban(no_host => 1, version => '1.0'), $OK201, up => {%UP_BAN});
row('header: Content-Type "application/json;charset=utf-8" -> 201, upstream type application/json',
    ban(ct => 'application/json;charset=utf-8'), $OK201, up => {%UP_BAN});
row('header: Content-Type "APPLICATION/JSON" -> 201',
    ban(ct => 'APPLICATION/JSON'), $OK201, up => {%UP_BAN});
row('header: Content-Type "application/json ; charset=utf-8" -> 201',
    ban(ct => 'application/json ; charset=utf-8'), $OK201, up => {%UP_BAN});
row('header: Content-Type "application/json-patch+json" -> 415 code 4',
    ban(ct => 'application/json-patch+json'), [ 415, 4, $CT415 ]);
row('header: Content-Type "application/jsonp" -> 415 code 4',
    ban(ct => 'application/jsonp'), [ 415, 4, $CT415 ]);
row('header: Content-Type "application/json,text/plain" -> 415 code 4',
    ban(ct => 'application/json,text/plain'), [ 415, 4, $CT415 ]);
row('header: Content-Type "text/json" -> 415 code 4',
    ban(ct => 'text/json'), [ 415, 4, $CT415 ]);
row('header: no Content-Type with a body -> 415 code 4',
    ban(ct => undef), [ 415, 4, $CT415 ]);
row('header: Content-Type text/plain then application/json (NGINX keeps the first) -> 415 code 4',
    ban(ct => 'text/plain', headers => [ 'Content-Type' => 'application/json' ]), [ 415, 4, $CT415 ]);
row('header: Content-Type application/json then text/plain -> 201, upstream gets application/json only',
    ban(headers => [ 'Content-Type' => 'text/plain' ]), $OK201, up => {%UP_BAN});
row('header: charset=utf-16 with a UTF-16 body -> 400 code 4 invalid JSON (per code: the charset is not read, the body must be UTF-8)',
    ban(ct => 'application/json; charset=utf-16',
        body => join('', map { "$_\0" } split //, $BAN)), [ 400, 4, $BADJSON ]);
row('header: 100 X-Client-Request-Id headers -> 201, only the first one forwarded (per code)',
    ban(headers => [ map { ('X-Client-Request-Id' => "req-$_") } 1 .. 100 ]), $OK201,
    up => { %UP_BAN, request_id => ['req-1'] });
row('header: spoofed stream-auth-type, X-Stream-Client, Cookie, X-Forwarded-For, api_key, X-HTTP-Method-Override -> 201, none forwarded',
    ban(headers => [ 'stream-auth-type' => 'anonymous', 'X-Stream-Client' => 'evil',
                     Cookie => 'session=1', 'X-Forwarded-For' => '10.0.0.1', api_key => 'evil',
                     'X-HTTP-Method-Override' => 'DELETE' ]),
    $OK201, up => { %UP_BAN, spoof => 1 });

###############################################################################
# running the rows

my $TIMEOUT = $t->valgrind ? 60 : 10;

sub esc {
    my ($s) = @_;
    my $e = $s =~ s/([^\x20-\x7e])/sprintf '\\x%02x', ord $1/ger;
    return length $e > 400 ? substr($e, 0, 300) . '...(' . length($s) . ' bytes)...' . substr($e, -60) : $e;
}

# head, then the body only after "100 Continue"; returns (got 100, response)
sub expect100 {
    my ($req, $want_continue) = @_;
    my $i = index($req, "\r\n\r\n");
    my ($head, $body) = (substr($req, 0, $i + 4), substr($req, $i + 4));
    my $s = IO::Socket::INET->new(PeerAddr => '127.0.0.1', PeerPort => $t->port, Proto => 'tcp',
        Timeout => $TIMEOUT) or return (0, { status => undef, error => "connect: $@" });
    binmode $s;
    local $SIG{PIPE} = 'IGNORE';
    syswrite($s, $head);
    my $sel = IO::Select->new($s);
    my ($buf, $eof, $continue) = ('', 0, 0);
    my $end = time + $TIMEOUT;
    while (time < $end) {
        if (!$continue && $buf =~ s{\AHTTP/1\.1 100 Continue\r\n\r\n}{}) {
            $continue = 1;
            syswrite($s, $body);
        }
        my ($r) = StreamMod::Test::_parse_responses($buf, 'POST', $eof, 1);
        if ($r) { close $s; return ($continue, $r) }
        last if $eof;
        next unless $sel->can_read($end - time);
        my $n = sysread($s, $buf, 65536, length $buf);
        $eof = 1 unless $n;
    }
    close $s;
    return ($continue, { status => undef, error => 'no response', raw => $buf });
}

sub check_api_error {
    my ($r, $status, $code, $re, $row) = @_;
    is_deeply([ sort keys %{ ref $r->{json} eq 'HASH' ? $r->{json} : {} } ],
        [qw(StatusCode code details duration message more_info)], 'APIError JSON shape')
        or diag('body: ' . esc($r->{body} // ''));
    is($r->{json}{code}, $code, "code $code");
    is($r->{json}{StatusCode}, $status, "StatusCode $status");
    is($r->{json}{duration}, '0.00ms', 'duration');
    is($r->{json}{more_info}, '', 'more_info');
    is_deeply($r->{json}{details}, [], 'details');
    like($r->{json}{message} // '', $re, "message $re");
    is_deeply($r->{headers}{'content-type'}, ['application/json'], 'Content-Type application/json');
    if ($status == 401) {
        is_deeply($r->{headers}{'www-authenticate'}, ['Bearer error="invalid_token"'],
            'WWW-Authenticate: Bearer error="invalid_token"');
    }
    if ($row->{allow}) {
        is_deeply($r->{headers}{allow}, [ $row->{allow} ], "Allow: $row->{allow}");
    }
}

sub check_upstream {
    my ($up, $row) = @_;
    my @all = $t->upstream_requests;
    is(scalar @all, 1, 'exactly one request reached the upstream') or return;
    my $u = $all[0];
    is($u->{method}, $up->{method} // 'POST', 'upstream method');
    is($u->{path}, $up->{path}, "upstream path $up->{path}");
    is($u->{raw_query}, $up->{query}, "upstream query is exactly $up->{query}");
    is($u->{body}, $up->{body}, 'upstream body byte for byte') if defined $up->{body};
    if ($up->{user_token}) {
        is_deeply($u->{headers}{authorization}, [ $up->{user_token} ],
            'upstream Authorization is the caller\'s bare token');
    } else {
        is_deeply($t->verify_server_token(($u->{headers}{authorization} || [])->[0]),
            { server => JSON::PP::true }, 'upstream Authorization is the server token');
    }
    if ($up->{request_id}) {
        is_deeply($u->{headers}{'x-client-request-id'}, $up->{request_id}, 'x-client-request-id upstream');
    }
    is(scalar @{ $u->{headers}{authorization} || [] }, 1, 'one Authorization upstream');
    is($u->{status}, 201, 'the emulator accepted it') or diag($u->{error})
        if ($u->{method} // '') eq 'POST';
    if ($up->{host_not}) {
        unlike(join(',', @{ $u->{headers}{host} || [] }), qr/\Q$up->{host_not}\E/,
            "upstream Host is not $up->{host_not}");
    }
    if ($up->{not_chunked}) {
        ok(!$u->{chunked}, 'not chunked upstream');
        is_deeply($u->{headers}{'content-length'}, [ length $up->{body} ], 'Content-Length upstream');
    }
    if ($up->{no_header}) {
        ok(!$u->{headers}{ $up->{no_header} }, "no $up->{no_header} upstream");
    }
    if ($up->{spoof}) {
        is_deeply($u->{headers}{'stream-auth-type'}, ['jwt'], 'stream-auth-type: jwt only');
        is_deeply($u->{headers}{'x-stream-client'}, ['ngx_stream_mod/0.1.0'], 'X-Stream-Client ours only');
        ok(!$u->{headers}{$_}, "no $_ upstream") for qw(cookie x-forwarded-for api_key x-http-method-override);
    }
    is_deeply($u->{headers}{'content-type'}, ['application/json'], 'upstream Content-Type application/json')
        if ($u->{method} // '') eq 'POST';
}

sub run_row {
    my ($row) = @_;
    my ($status, $code, $re) = @{ $row->{expect} };
    my $how = $row->{how} // 'raw';
    my $off = length $t->error_log;

    $t->reset_upstream;

    my ($r, @all, $continue);
    my $alog = length $t->access_log;
    my $t0 = time;
    if ($how eq 'expect100') {
        ($continue, $r) = expect100($row->{req});
        is($continue ? 1 : 0, $row->{continue}, $row->{continue}
            ? 'NGINX answered 100 Continue' : 'no 100 Continue: the body was never asked for');
    } elsif ($how eq 'pipeline') {
        @all = $t->raw_request($row->{req}, all => 1, timeout => $TIMEOUT);
        $r = $all[0];
    } else {
        $r = $t->raw_request($row->{req}, timeout => ($how eq 'stall' ? $TIMEOUT + 5 : $TIMEOUT),
            $how eq 'half_close' ? (half_close => 1) : ());
    }

    my $ok = 1;
    if ($status eq 'closed') {
        ok(!defined $r->{status}, 'no HTTP response') or $ok = 0;
        is($r->{error}, 'unparsable response', 'the server closed the connection')
            or $ok = 0;
        is($r->{raw}, '', 'not a byte was answered') or $ok = 0;
        cmp_ok(time - $t0, '>=', $row->{min_time}, "closed after at least $row->{min_time} s")
            if $row->{min_time};
        if ($row->{log_status}) {
            my $new = substr($t->access_log, $alog);
            like($new, qr/"POST \/moderation\/ban HTTP\/1\.1" $row->{log_status} /,
                "the access log shows $row->{log_status}");
        }
    } elsif ($status eq 'pipeline') {
        is_deeply([ map { $_->{status} } @all ], $code, 'statuses ' . join(', ', @$code)) or $ok = 0;
        for my $x (grep { ($_->{status} // 0) >= 400 } @all) {
            is_deeply([ $x->{json}{StatusCode}, $x->{headers}{'content-type'} ],
                [ $x->{status}, ['application/json'] ], "the $x->{status} is an APIError")
                or $ok = 0;
        }
    } else {
        is($r->{status}, $status, "status $status") or $ok = 0;
        if (defined $code && $code eq 'nginx') {
            ok(defined $r->{status} && $r->{status} !~ /\A2/, 'not a 2xx');
        } elsif (defined $code) {
            check_api_error($r, $status, $code, $re, $row);
        }
    }

    if ($row->{up}) {
        check_upstream($row->{up}, $row);
    } else {
        is($t->upstream_count, 0, 'nothing reached the upstream') or $ok = 0;
    }

    if ($row->{spooled}) {
        like(substr($t->error_log, $off), qr/a client request body is buffered to a temporary file/,
            'the body was spooled to a temporary file');
    }

    note(sprintf '%s => %s %s', $row->{name}, $r->{status} // $r->{error} // '-',
        ref $r->{json} eq 'HASH' && defined $r->{json}{code}
            ? "code=$r->{json}{code} \"" . ($r->{json}{message} // '') . '"' : '');

    unless ($ok) {
        diag('request: ' . esc($row->{req}));
        diag('response: ' . esc($r->{raw} // $r->{error} // ''));
    }
}

my $start = time;

for my $row (@rows) {
    subtest $row->{name} => sub { run_row($row) };
}

my $elapsed = time - $start;
note(sprintf '%d rows in %.1f s', scalar @rows, $elapsed);
cmp_ok(scalar @rows, '>=', 150, 'the matrix has at least 150 rows');

my %seen;
my @dups = grep { $seen{$_}++ } map { $_->{name} } @rows;
is_deeply(\@dups, [], 'row names are distinct');

# still serving after all of that
{
    $t->reset_upstream;
    my $r = $t->raw_request(ban());
    is($r->{status}, 201, 'after the matrix a plain ban still passes');
}

my $log = $t->error_log;
unlike($log, qr/\[(?:alert|crit|emerg)\]/, 'no [alert], [crit] or [emerg] in the error log')
    or diag(join "\n", grep { /\[(?:alert|crit|emerg)\]/ } split /\n/, $log);
unlike($log, qr/exited on signal/, 'no worker crashed');

$t->stop;

done_testing;
