#!/usr/bin/perl

# No request reaches the upstream through a stream_mod location without
# passing the whole gate (SPEC section 1, last paragraph): not with
# "satisfy any" and an allow line, not when an ACCESS-phase handler
# (deny, auth_request) decides first, not through an internal redirect
# (error_page, try_files, rewrite, X-Accel-Redirect) and not through a
# subrequest (auth_request, mirror, SSI include). Each detour is refused
# with the exact APIError and nothing reaches the emulator; the audit
# access log (log_subrequest on) shows the refusal of each subrequest.
# A location without stream_mod is not affected at all.

use strict;
use warnings;

use Test::More;
use MIME::Base64 qw(encode_base64);
use Time::HiRes qw(time sleep);

use lib 't/lib';
use StreamMod::Test qw(mint_jwt b64url api_error_ok);

my $t = StreamMod::Test->new;

$t->write_policy({
    rules => [
        { effect => 'allow', actions => ['*'], users => ['mod-1'] },
    ],
});

$t->write_file('htpasswd', "mod:{PLAIN}pass\n");

my $GATE = <<'CONF';
        location /moderation/ {
            stream_mod on;
            %%EXTRA%%
            proxy_pass http://stream_api;
        }

        location /calls/ {
            stream_mod on;
            %%EXTRA%%
            proxy_pass http://stream_api;
        }
CONF

sub gate {
    my ($extra) = @_;
    (my $text = $GATE) =~ s/%%EXTRA%%/$extra \/\/ ''/ge;
    return $text;
}

$t->write_config(<<"CONF");
http {
@{[ $t->http_preamble ]}
    log_format audit escape=json
        '\$request_uri|\$uri|\$status|\$stream_mod_decision|\$stream_mod_reason';
    access_log %%DIR%%/audit.log audit;
    log_subrequest on;

    stream_mod_api_key %%API_KEY%%;
    stream_mod_api_secret_file %%SECRET_FILE%%;
    stream_mod_policy %%DIR%%/policy.json;

    upstream stream_api {
        server 127.0.0.1:%%EMU_PORT%%;
    }

    server {
        listen 127.0.0.1:%%PORT%% default_server;
        server_name localhost;

@{[ gate() ]}

        # detours into the gate

        location = /try-files {
            try_files /nonexistent /moderation/ban;
        }

        location = /error-page {
            error_page 404 = /moderation/ban;
            return 404;
        }

        location = /rewrite {
            rewrite ^ /moderation/ban last;
        }

        location = /x-accel {
            proxy_pass http://127.0.0.1:%%EMU_PORT%%;
        }

        location = /auth-request {
            auth_request /moderation/ban;
            proxy_pass http://127.0.0.1:%%EMU_PORT%%;
        }

        location = /mirror {
            mirror /moderation/ban;
            mirror_request_body on;
            proxy_pass http://127.0.0.1:%%PORT%%/sink;
        }

        location = /ssi {
            ssi on;
            default_type text/html;
            return 200 'before <!--# include virtual="/moderation/ban" --> after';
        }

        # the same detours into a location without stream_mod

        location = /mirror-control {
            mirror /plain/api/v2/moderation/ban;
            mirror_request_body on;
            proxy_pass http://127.0.0.1:%%PORT%%/sink;
        }

        location = /sink {
            return 200 "sunk\\n";
        }

        # not a stream_mod location: untouched

        location /plain/ {
            proxy_pass http://127.0.0.1:%%EMU_PORT%%/;
        }

        location = /plain-404 {
            return 404;
        }

        location = /plain-deny {
            deny all;
        }
    }

    server {
        listen 127.0.0.1:%%PORT%%;
        server_name satisfy.test;

@{[ gate("satisfy any; allow 127.0.0.1; deny all;
            auth_basic gate; auth_basic_user_file %%DIR%%/htpasswd;") ]}
    }

    server {
        listen 127.0.0.1:%%PORT%%;
        server_name deny.test;

@{[ gate('deny all;') ]}
    }

    server {
        listen 127.0.0.1:%%PORT%%;
        server_name auth-request.test;

        location /moderation/ {
            stream_mod on;
            auth_request /auth-no;
            proxy_pass http://stream_api;
        }

        location /calls/ {
            stream_mod on;
            auth_request /auth-yes;
            proxy_pass http://stream_api;
        }

        location = /auth-no {
            return 401;
        }

        location = /auth-yes {
            return 204;
        }
    }

    server {
        listen 127.0.0.1:%%PORT%%;
        server_name error-page.test;

        error_page 403 404 = /moderation/ban;

@{[ gate() ]}

        location = /missing {
            return 404;
        }
    }
}
CONF

$t->run;

my $TOKEN = $t->user_token('mod-1');
my $TIMEOUT = $t->valgrind ? 30 : 5;
my $REFUSED = 'internal redirects and subrequests into a stream_mod location '
    . 'are refused';
my $BAN_BODY = '{"target_user_id":"u-2"}';
my @JSON = ('Content-Type' => 'application/json');

###############################################################################
# helpers

# audit log lines, without the /sink requests NGINX makes to itself
sub audit_lines {
    open my $fh, '<', $t->dir . '/audit.log' or return ();
    # complete lines only: a line being written may be read half-way
    my @l = grep { !m{\A/sink\|} } map { chomp; $_ } grep { /\n\z/ } <$fh>;
    return @l;
}

# send a request; returns (response, its audit lines: $want are awaited)
sub send_logged {
    my ($want, $method, $path, %o) = @_;
    my $before = () = audit_lines();
    $t->reset_upstream;
    my $r = $t->request($method, $path, %o);
    my $end = time + $TIMEOUT;
    my @l;
    while (1) {
        @l = audit_lines();
        last if @l - $before >= $want || time > $end;
        sleep 0.005;
    }
    # the main request is logged after its subrequests: once its line is
    # there, every line of this request is
    return ($r, [ @l[$before .. $#l] ]);
}

sub upstream_paths {
    return [ map { "$_->{method} $_->{path}" } $t->upstream_requests ];
}

###############################################################################
# the gate itself, for comparison: a straight request is forwarded

{
    my ($r, $log) = send_logged(1, POST => '/moderation/ban', token => $TOKEN,
        body => $BAN_BODY, headers => \@JSON);
    is($r->{status}, 201, 'POST /moderation/ban straight -> 201 from Stream');
    is_deeply(upstream_paths(), ['POST /api/v2/moderation/ban'],
        'POST /moderation/ban straight: reached Stream');
    is_deeply($log, ['/moderation/ban|/api/v2/moderation/ban|201|allow|allowed'],
        'POST /moderation/ban straight: audit line');
}

###############################################################################
# internal redirects into the gate: refused. "rewrite ... last" is one too:
# NGINX's rewrite module marks the request internal when it changes the
# URI, so the gate refuses it before routing (it does not get as far as
# routing "/rewrite", the client's path, to a 404).

for my $c (
    ['try_files /nonexistent /moderation/ban', '/try-files'],
    ['error_page 404 = /moderation/ban', '/error-page'],
    ['rewrite ^ /moderation/ban last', '/rewrite'],
    )
{
    my ($what, $path) = @$c;
    my $name = "POST $path ($what) with a valid token and body -> 403 code 17";

    my ($r, $log) = send_logged(1, POST => $path, token => $TOKEN,
        body => $BAN_BODY, headers => \@JSON);
    api_error_ok($r, $name, 403, 17, $REFUSED);
    is($t->upstream_count, 0, "$name: nothing reached Stream");
    is_deeply($log, ["$path|/moderation/ban|403|reject|$REFUSED"],
        "$name: audit line");
}

# X-Accel-Redirect from an upstream

{
    my $name = 'POST /x-accel, upstream answers X-Accel-Redirect: '
        . '/moderation/ban -> 403 code 17';

    $t->emu_control({ path_prefix => '/x-accel', status => 200, body => 'x',
        content_type => 'text/plain',
        headers => { 'X-Accel-Redirect' => '/moderation/ban' } });

    my ($r, $log) = send_logged(1, POST => '/x-accel', token => $TOKEN,
        body => $BAN_BODY, headers => \@JSON);
    api_error_ok($r, $name, 403, 17, $REFUSED);
    is_deeply(upstream_paths(), ['POST /x-accel'],
        "$name: only /x-accel reached the emulator, not the ban endpoint");
    is_deeply($log, ["/x-accel|/moderation/ban|403|reject|$REFUSED"],
        "$name: audit line");

    $t->emu_control(undef);
}

###############################################################################
# subrequests into the gate: refused

{
    my $name = 'POST /auth-request (auth_request /moderation/ban)';

    my ($r, $log) = send_logged(2, POST => '/auth-request', token => $TOKEN,
        body => $BAN_BODY, headers => \@JSON);
    is($r->{status}, 403, "$name: the main request gets 403");
    is($t->upstream_count, 0, "$name: nothing reached the emulator");
    is_deeply($log, [
        "/auth-request|/moderation/ban|403|reject|$REFUSED",
        '/auth-request|/auth-request|403||',
    ], "$name: audit: the subrequest was refused by the gate");
}

{
    my $name = 'POST /mirror (mirror /moderation/ban; mirror_request_body on)';

    my ($r, $log) = send_logged(2, POST => '/mirror', token => $TOKEN,
        body => $BAN_BODY, headers => \@JSON);
    is($r->{status}, 200, "$name: the main request is answered 200");
    is($r->{body}, "sunk\n", "$name: by the location it proxies to");
    is($t->upstream_count, 0, "$name: nothing reached the emulator");
    is_deeply($log, [
        "/mirror|/moderation/ban|403|reject|$REFUSED",
        '/mirror|/mirror|200||',
    ], "$name: audit: the mirror subrequest was refused by the gate");

    # the same mirror into a location without the gate does reach it

    $name = 'POST /mirror-control (mirror /plain/api/v2/moderation/ban)';
    ($r, $log) = send_logged(2, POST => '/mirror-control', token => $TOKEN,
        body => $BAN_BODY, headers => \@JSON);
    is($r->{status}, 200, "$name: 200");
    is_deeply(upstream_paths(), ['POST /api/v2/moderation/ban'],
        "$name: the mirror subrequest reached the emulator (control)");
    is($t->last_upstream && $t->last_upstream->{body}, $BAN_BODY,
        "$name: with the body");
}

{
    my $name = 'GET /ssi (<!--# include virtual="/moderation/ban" -->)';

    my ($r, $log) = send_logged(2, GET => '/ssi', token => $TOKEN);
    is($r->{status}, 200, "$name: the page is answered 200");
    like($r->{body}, qr{\Abefore .*403 Forbidden.* after\z}s,
        "$name: the include got NGINX's 403 page, not Stream's answer");
    is($t->upstream_count, 0, "$name: nothing reached the emulator");
    is_deeply($log, [
        "/ssi|/moderation/ban|403|reject|$REFUSED",
        '/ssi|/ssi|200||',
    ], "$name: audit: the include subrequest was refused by the gate");
}

###############################################################################
# satisfy any; allow 127.0.0.1; deny all; auth_basic: the gate still runs

{
    my @h = (host => 'satisfy.test');
    my $name = 'satisfy any + allow: ban without a token -> 401 code 5';

    my ($r, $log) = send_logged(1, POST => '/moderation/ban', @h,
        body => $BAN_BODY, headers => \@JSON);
    api_error_ok($r, $name, 401, 5, 'missing user token');
    is_deeply($r->{headers}{'www-authenticate'}, ['Bearer error="invalid_token"'],
        "$name: WWW-Authenticate Bearer");
    is($t->upstream_count, 0, "$name: nothing reached Stream");
    is_deeply($log, ['/moderation/ban|/moderation/ban|401|reject|missing user token'],
        "$name: audit line");

    $name = 'satisfy any + allow: ban with valid Basic credentials, no token '
        . '-> 401 code 5';
    ($r) = send_logged(1, POST => '/moderation/ban', @h, body => $BAN_BODY,
        headers => [@JSON, Authorization => 'Basic ' . encode_base64('mod:pass', '')]);
    api_error_ok($r, $name, 401, 5, 'malformed user token');
    is($t->upstream_count, 0, "$name: nothing reached Stream");

    $name = 'satisfy any + allow: ban with a forged token -> 401 code 43';
    my $forged = $t->token({ user_id => 'mod-1', exp => time + 600 },
        secret => 'not-the-secret');
    ($r) = send_logged(1, POST => '/moderation/ban', @h, token => $forged,
        body => $BAN_BODY, headers => \@JSON);
    api_error_ok($r, $name, 401, 43, 'token signature is invalid');
    is($t->upstream_count, 0, "$name: nothing reached Stream");

    $name = 'satisfy any + allow: ban with a bad body -> 400 code 4';
    ($r) = send_logged(1, POST => '/moderation/ban', @h, token => $TOKEN,
        body => '{"target_user_id":5}', headers => \@JSON);
    api_error_ok($r, $name, 400, 4, 'target_user_id has the wrong type');
    is($t->upstream_count, 0, "$name: nothing reached Stream");

    $name = 'satisfy any + allow: ban by a user the policy does not allow '
        . '-> 403 code 17';
    ($r) = send_logged(1, POST => '/moderation/ban', @h,
        token => $t->user_token('mod-2'), body => $BAN_BODY, headers => \@JSON);
    api_error_ok($r, $name, 403, 17, 'denied: no rule allows ban (default)');
    is($t->upstream_count, 0, "$name: nothing reached Stream");

    $name = 'satisfy any + allow: kick with a valid token -> forwarded';
    ($r) = send_logged(1, POST => '/calls/default/c-1/kick', @h, token => $TOKEN,
        body => '{"user_id":"u-2"}', headers => \@JSON);
    is($r->{status}, 201, "$name: 201");
    is_deeply(upstream_paths(), ['POST /api/v2/video/call/default/c-1/kick'],
        "$name: reached Stream");
    is($t->last_upstream && $t->last_upstream->{body},
        '{"kicked_by_id":"mod-1","user_id":"u-2"}', "$name: stamped");
}

###############################################################################
# refusals made before the gate are APIErrors too, and nothing goes upstream

{
    my $name = 'deny all in the location: ban with a valid token -> 403 code 17';

    my ($r, $log) = send_logged(1, POST => '/moderation/ban', host => 'deny.test',
        token => $TOKEN, body => $BAN_BODY, headers => \@JSON);
    api_error_ok($r, $name, 403, 17, 'forbidden');
    is($t->upstream_count, 0, "$name: nothing reached Stream");
    is_deeply($log, ['/moderation/ban|/moderation/ban|403|reject|forbidden'],
        "$name: audit line");

    $name = 'deny all in the location: GET /calls/default/c-1/kick -> 403 code 17';
    ($r) = send_logged(1, GET => '/calls/default/c-1/kick', host => 'deny.test');
    api_error_ok($r, $name, 403, 17, 'forbidden');
    is($t->upstream_count, 0, "$name: nothing reached Stream");
}

{
    # the auth_request subrequest is logged first (log_subrequest on)

    my $name = 'auth_request answering 401: ban with a valid token -> 401 code 5';

    my ($r, $log) = send_logged(2, POST => '/moderation/ban',
        host => 'auth-request.test', token => $TOKEN, body => $BAN_BODY,
        headers => \@JSON);
    api_error_ok($r, $name, 401, 5, 'unauthorized');
    is_deeply($r->{headers}{'www-authenticate'}, ['Bearer error="invalid_token"'],
        "$name: WWW-Authenticate Bearer");
    is($t->upstream_count, 0, "$name: nothing reached Stream");
    is_deeply($log, [
        '/moderation/ban|/auth-no|401||',
        '/moderation/ban|/moderation/ban|401|reject|unauthorized',
    ], "$name: audit lines");

    $name = 'auth_request answering 204: kick without a token -> 401 code 5';
    ($r, $log) = send_logged(2, POST => '/calls/default/c-1/kick',
        host => 'auth-request.test', body => '{"user_id":"u-2"}',
        headers => \@JSON);
    api_error_ok($r, $name, 401, 5, 'missing user token');
    is($t->upstream_count, 0, "$name: nothing reached Stream");
    is_deeply($log, [
        '/calls/default/c-1/kick|/auth-yes|204||',
        '/calls/default/c-1/kick|/calls/default/c-1/kick|401|reject|missing user token',
    ], "$name: audit lines");

    $name = 'auth_request answering 204: kick with a valid token -> forwarded';
    ($r, $log) = send_logged(2, POST => '/calls/default/c-1/kick',
        host => 'auth-request.test', token => $TOKEN,
        body => '{"user_id":"u-2"}', headers => \@JSON);
    is($r->{status}, 201, "$name: 201");
    is_deeply(upstream_paths(), ['POST /api/v2/video/call/default/c-1/kick'],
        "$name: reached Stream");
    is_deeply($log, [
        '/calls/default/c-1/kick|/auth-yes|204||',
        '/calls/default/c-1/kick|/api/v2/video/call/default/c-1/kick|201|allow|allowed',
    ], "$name: audit lines");
}

###############################################################################
# error_page at the server level: not applied to the gate's own answers,
# and a redirect through it into the gate is refused

{
    my @h = (host => 'error-page.test');
    my $name = 'error_page 403 404 = /moderation/ban: POST /moderation/nope '
        . '-> 404 code 16, not redirected';

    my ($r, $log) = send_logged(1, POST => '/moderation/nope', @h,
        token => $TOKEN, body => $BAN_BODY, headers => \@JSON);
    api_error_ok($r, $name, 404, 16, 'no moderation endpoint at this path');
    is($t->upstream_count, 0, "$name: nothing reached Stream");
    is_deeply($log, ['/moderation/nope|/moderation/nope|404|reject|'
        . 'no moderation endpoint at this path'], "$name: audit line");

    $name = 'error_page 403 404 = /moderation/ban: a ban the policy denies '
        . '-> 403 code 17, not redirected';
    ($r) = send_logged(1, POST => '/moderation/ban', @h,
        token => $t->user_token('mod-2'), body => $BAN_BODY, headers => \@JSON);
    api_error_ok($r, $name, 403, 17, 'denied: no rule allows ban (default)');
    is($t->upstream_count, 0, "$name: nothing reached Stream");

    $name = 'error_page 403 404 = /moderation/ban: POST /missing (404) '
        . '-> 403 code 17 refused';
    ($r, $log) = send_logged(1, POST => '/missing', @h, token => $TOKEN,
        body => $BAN_BODY, headers => \@JSON);
    api_error_ok($r, $name, 403, 17, $REFUSED);
    is($t->upstream_count, 0, "$name: nothing reached Stream");
    is_deeply($log, ["/missing|/moderation/ban|403|reject|$REFUSED"],
        "$name: audit line");
}

###############################################################################
# a location without stream_mod is not affected

{
    my $name = 'POST /plain/api/v2/moderation/ban (no stream_mod)';
    my $body = '{"target_user_id":"u-2", "banned_by_id":"someone"}';

    my ($r, $log) = send_logged(1, POST => '/plain/api/v2/moderation/ban',
        token => $TOKEN, body => $body,
        headers => [@JSON, Cookie => 'c=1']);
    is($r->{status}, 401, "$name: Stream's own 401 passes through");
    is_deeply($r->{headers}{'content-type'}, ['application/json;charset=utf-8'],
        "$name: Stream's Content-Type");
    is($r->{json} && $r->{json}{more_info},
        'https://getstream.io/chat/docs/api_errors_response',
        "$name: Stream's error body, not the gate's");

    my $u = $t->last_upstream;
    is_deeply(upstream_paths(), ['POST /api/v2/moderation/ban'],
        "$name: reached the emulator");
    is($u && $u->{body}, $body, "$name: body unchanged, no actor stamped");
    is($u && $u->{raw_query}, undef, "$name: no api_key added")
        or diag(explain($u->{raw_query}));
    is_deeply($u && $u->{headers}{authorization}, ["Bearer $TOKEN"],
        "$name: the client's Authorization passes");
    is_deeply($u && $u->{headers}{cookie}, ['c=1'], "$name: Cookie passes");
    ok($u && !$u->{headers}{'x-stream-client'}, "$name: no X-Stream-Client");
    is_deeply($log, ['/plain/api/v2/moderation/ban|/plain/api/v2/moderation/ban|401||'],
        "$name: no stream_mod decision in the audit line");

    $name = 'POST /plain-404 (no stream_mod, return 404)';
    ($r) = send_logged(1, POST => '/plain-404', body => $BAN_BODY,
        headers => \@JSON);
    is($r->{status}, 404, "$name: 404");
    like($r->{headers}{'content-type'}[0] // '', qr{\Atext/html},
        "$name: NGINX's HTML page, not an APIError");
    like($r->{body}, qr{<title>404 Not Found</title>}, "$name: HTML body");

    $name = 'GET /plain-deny (no stream_mod, deny all)';
    ($r) = send_logged(1, GET => '/plain-deny');
    is($r->{status}, 403, "$name: 403");
    like($r->{headers}{'content-type'}[0] // '', qr{\Atext/html},
        "$name: NGINX's HTML page, not an APIError");
    unlike($r->{body}, qr/"code"/, "$name: no APIError body");
}

$t->stop;

done_testing;
