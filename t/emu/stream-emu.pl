#!/usr/bin/env perl
# stream-emu.pl: a local stand-in for Stream's video/moderation API
# (https://video.stream-io-api.com) for tests and demos.
#
# It checks requests the way Stream does (api_key, stream-auth-type, JWT,
# route, parameters, JSON body against the OpenAPI schemas), answers with
# Stream-shaped bodies and records every request it receives, one JSON line
# each, so tests can assert on exactly what reached "Stream".
#
# usage: stream-emu.pl --listen 127.0.0.1:PORT --api-key KEY
#          (--api-secret SECRET | --api-secret-file FILE)
#          [--spec-dir DIR] [--record FILE] [--pidfile FILE]
#          [--control FILE] [--verbose]

use strict;
use warnings;

use IO::Socket::INET;
use IO::Select;
use POSIX qw(:sys_wait_h strftime);
use Socket qw(SOL_SOCKET SO_LINGER);
use Fcntl qw(:flock O_RDWR O_CREAT SEEK_SET SEEK_END);
use Time::HiRes qw(time sleep);
use JSON::PP;
use Digest::SHA qw(hmac_sha256 sha1_hex);
use MIME::Base64 qw(decode_base64 encode_base64);
use Getopt::Long;
use File::Basename qw(dirname);
use File::Spec;

my $SELF_DIR  = dirname(File::Spec->rel2abs(__FILE__));
my $REPO_ROOT = File::Spec->catdir($SELF_DIR, File::Spec->updir, File::Spec->updir);

my %opt = (verbose => 0);
GetOptions(
    'listen=s'          => \$opt{listen},
    'api-key=s'         => \$opt{api_key},
    'api-secret=s'      => \$opt{api_secret},
    'api-secret-file=s' => \$opt{api_secret_file},
    'spec-dir=s'        => \$opt{spec_dir},
    'record=s'          => \$opt{record},
    'pidfile=s'         => \$opt{pidfile},
    'control=s'         => \$opt{control},
    'verbose!'          => \$opt{verbose},
    'help'              => sub { usage(0) },
) or usage(2);

sub usage {
    print STDERR "usage: $0 --listen 127.0.0.1:PORT --api-key KEY "
      . "(--api-secret S | --api-secret-file F) [--spec-dir DIR] [--record FILE] "
      . "[--pidfile FILE] [--control FILE] [--verbose]\n";
    exit $_[0];
}

usage(2) unless defined $opt{listen} && defined $opt{api_key};
if (defined $opt{api_secret_file}) {
    open my $fh, '<', $opt{api_secret_file} or die "stream-emu: $opt{api_secret_file}: $!\n";
    my $line = <$fh> // '';
    $line =~ s/[\r\n]+\z//;
    $opt{api_secret} = $line;
}
usage(2) unless defined $opt{api_secret} && length $opt{api_secret};

$opt{spec_dir} //= $ENV{STREAM_API_SPEC_DIR}
  // File::Spec->catdir($REPO_ROOT, File::Spec->updir, 'shared', 'stream-api');

my ($LHOST, $LPORT) = $opt{listen} =~ /\A(.+):(\d+)\z/
  or die "stream-emu: --listen wants HOST:PORT\n";
$LHOST = '127.0.0.1' if $LHOST eq 'localhost';
die "stream-emu: refusing to listen on non-loopback address $LHOST\n"
  unless $LHOST =~ /\A127\.\d+\.\d+\.\d+\z/;

my $JSON_OUT = JSON::PP->new->utf8->canonical;    # answers and records

# --------------------------------------------------------------------------
# OpenAPI specs: parsed once in the parent, shared with children by fork.

my %SPEC_FILES = (
    server => ['v2-moderation-serverside-api.json', 'v2-video-serverside-api.json'],
    client => ['v2-moderation-clientside-api.json', 'v2-video-clientside-api.json'],
);
my %ROUTES;    # side => [ { template, segs => [...], methods => { get => {op, doc} } } ]
my %METHODS = map { $_ => 1 } qw(get put post delete patch head options);

load_specs();

sub load_specs {
    my $json = JSON::PP->new->utf8;
    for my $side (sort keys %SPEC_FILES) {
        my %by_template;
        for my $file (@{ $SPEC_FILES{$side} }) {
            my $path = File::Spec->catfile($opt{spec_dir}, $file);
            open my $fh, '<:raw', $path or die "stream-emu: cannot read spec $path: $!\n";
            local $/;
            my $doc = $json->decode(<$fh>);
            my $paths = $doc->{paths} || {};
            for my $tpl (sort keys %$paths) {
                my $r = $by_template{$tpl} //= {
                    template => $tpl,
                    segs     => [ split m{/}, $tpl, -1 ],
                    methods  => {},
                };
                for my $m (keys %{ $paths->{$tpl} }) {
                    next unless $METHODS{$m} && ref $paths->{$tpl}{$m} eq 'HASH';
                    $r->{methods}{$m} //= { op => $paths->{$tpl}{$m}, doc => $doc, file => $file };
                }
            }
        }
        $ROUTES{$side} = [ values %by_template ];
    }
}

# Find the route for a path (list of decoded segments): literal segments
# win over {param} segments, left to right, as Stream's router does.
sub match_route {
    my ($side, $segs) = @_;
    my ($best, $best_key);
  ROUTE:
    for my $r (@{ $ROUTES{$side} }) {
        my $t = $r->{segs};
        next unless @$t == @$segs;
        my $key = '';
        for my $i (0 .. $#$t) {
            if ($t->[$i] =~ /\A\{[^}]+\}\z/) {
                next ROUTE unless length $segs->[$i];
                $key .= '0';
            } else {
                next ROUTE unless $t->[$i] eq $segs->[$i];
                $key .= '1';
            }
        }
        if (!defined $best_key || $key gt $best_key) {
            ($best, $best_key) = ($r, $key);
        }
    }
    return $best;
}

# --------------------------------------------------------------------------
# Stream's error answers

my %REASON = (
    100 => 'Continue', 200 => 'OK', 201 => 'Created', 204 => 'No Content',
    400 => 'Bad Request', 401 => 'Unauthorized', 403 => 'Forbidden',
    404 => 'Not Found', 405 => 'Method Not Allowed', 408 => 'Request Timeout',
    411 => 'Length Required', 413 => 'Request Entity Too Large',
    415 => 'Unsupported Media Type', 429 => 'Too Many Requests',
    431 => 'Request Header Fields Too Large', 500 => 'Internal Server Error',
    501 => 'Not Implemented', 502 => 'Bad Gateway', 503 => 'Service Unavailable',
    504 => 'Gateway Timeout', 505 => 'HTTP Version Not Supported',
);

# die with one of these to refuse a request
sub refuse {
    my ($status, $code, $message, %extra) = @_;
    die { status => $status, code => $code, message => $message, %extra };
}

sub api_error_body {
    my ($e) = @_;
    my %body = (
        code       => $e->{code} + 0,
        message    => $e->{message},
        StatusCode => $e->{status} + 0,
        duration   => '0.01ms',
        more_info  => 'https://getstream.io/chat/docs/api_errors_response',
        details    => [],
    );
    $body{exception_fields} = $e->{exception_fields} if $e->{exception_fields};
    return $JSON_OUT->encode(\%body);
}

# --------------------------------------------------------------------------
# Strict JSON parser: keeps what JSON::PP loses (duplicate keys, key order,
# the raw text of numbers). Input: a character string. Nodes:
#   {t=>'object', keys=>[...], v=>{k=>node}}  {t=>'array', v=>[...]}
#   {t=>'string', v=>$s}  {t=>'number', raw=>$tok, int=>0|1}
#   {t=>'boolean', v=>0|1}  {t=>'null'}

our $J;

sub json_parse {
    local $J = $_[0];
    pos($J) = 0;
    my $v = _jvalue(0);
    _jws();
    die "unexpected data after the JSON value at offset " . pos($J) . "\n"
      if pos($J) < length $J;
    return $v;
}

sub _jws { $J =~ /\G[ \t\r\n]+/gc }

sub _jpeek { substr($J, pos($J), 1) }

sub _jfail { die "$_[0] at offset " . (pos($J) // 0) . "\n" }

sub _jvalue {
    my ($depth) = @_;
    _jfail("JSON nested too deeply") if $depth > 64;
    _jws();
    if ($J =~ /\G\{/gc) {
        my %v;
        my @keys;
        _jws();
        return { t => 'object', keys => [], v => {} } if $J =~ /\G\}/gc;
        while (1) {
            _jws();
            _jfail("expected a string key") unless _jpeek() eq '"';
            my $k = _jstring();
            _jfail("duplicate key \"$k\"") if exists $v{$k};
            _jws();
            _jfail("expected ':'") unless $J =~ /\G:/gc;
            $v{$k} = _jvalue($depth + 1);
            push @keys, $k;
            _jws();
            next if $J =~ /\G,/gc;
            last if $J =~ /\G\}/gc;
            _jfail("expected ',' or '}'");
        }
        return { t => 'object', keys => \@keys, v => \%v };
    }
    if ($J =~ /\G\[/gc) {
        my @v;
        _jws();
        return { t => 'array', v => [] } if $J =~ /\G\]/gc;
        while (1) {
            push @v, _jvalue($depth + 1);
            _jws();
            next if $J =~ /\G,/gc;
            last if $J =~ /\G\]/gc;
            _jfail("expected ',' or ']'");
        }
        return { t => 'array', v => \@v };
    }
    return { t => 'string', v => _jstring() } if _jpeek() eq '"';
    if ($J =~ /\G(-?(?:0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?)/gc) {
        return { t => 'number', raw => $1, int => (defined $2 || defined $3) ? 0 : 1 };
    }
    return { t => 'boolean', v => 1 } if $J =~ /\Gtrue/gc;
    return { t => 'boolean', v => 0 } if $J =~ /\Gfalse/gc;
    return { t => 'null' } if $J =~ /\Gnull/gc;
    _jfail(pos($J) >= length $J ? "unexpected end of JSON input" : "invalid character");
}

my %ESC = ('"' => '"', '\\' => '\\', '/' => '/', b => "\b", f => "\f", n => "\n", r => "\r", t => "\t");

sub _jstring {
    $J =~ /\G"/gc or _jfail("expected '\"'");
    my $s = '';
    while (1) {
        if ($J =~ /\G([^"\\\x00-\x1f]+)/gc) { $s .= $1; next }
        last if $J =~ /\G"/gc;
        if ($J =~ /\G\\u([0-9a-fA-F]{4})/gc) {
            my $c = hex $1;
            if ($c >= 0xD800 && $c <= 0xDBFF && $J =~ /\G\\u(d[c-f][0-9a-f]{2})/gci) {
                $c = 0x10000 + (($c - 0xD800) << 10) + (hex($1) - 0xDC00);
            } elsif ($c >= 0xD800 && $c <= 0xDFFF) {
                $c = 0xFFFD;    # lone surrogate: Go's decoder substitutes U+FFFD
            }
            $s .= chr $c;
            next;
        }
        if ($J =~ /\G\\(["\\\/bfnrt])/gc) { $s .= $ESC{$1}; next }
        _jfail(pos($J) >= length $J ? "unexpected end of JSON input" : "invalid character in string");
    }
    return $s;
}

# strict UTF-8 (no overlongs, surrogates or code points above U+10FFFF)
sub valid_utf8 {
    my $b = $_[0];
    pos($b) = 0;
    while (pos($b) < length $b) {
        next if $b =~ /\G[\x00-\x7F]+/gc;
        next if $b =~ /\G(?:[\xC2-\xDF][\x80-\xBF]|\xE0[\xA0-\xBF][\x80-\xBF]
                            |[\xE1-\xEC\xEE\xEF][\x80-\xBF]{2}|\xED[\x80-\x9F][\x80-\xBF]
                            |\xF0[\x90-\xBF][\x80-\xBF]{2}|[\xF1-\xF3][\x80-\xBF]{3}
                            |\xF4[\x80-\x8F][\x80-\xBF]{2})+/gcx;
        return 0;
    }
    return 1;
}

# --------------------------------------------------------------------------
# Schema validation (the subset of OpenAPI 3.0 the Stream specs use)

sub resolve_schema {
    my ($doc, $s, $name) = @_;
    my $guard = 0;
    while (ref $s eq 'HASH' && defined $s->{'$ref'}) {
        my ($n) = $s->{'$ref'} =~ m{\A#/components/schemas/(.+)\z}
          or die "stream-emu: unsupported \$ref $s->{'$ref'}\n";
        $name = $n;
        $s = $doc->{components}{schemas}{$n} // {};
        die "stream-emu: \$ref loop\n" if ++$guard > 32;
    }
    return ($s, $name);
}

# Go's encoding/json matches keys to fields ignoring case (simple folding:
# only U+017F and U+212A fold to ASCII letters).
sub go_fold {
    my $k = lc $_[0];
    $k =~ tr/\x{17F}\x{212A}/sk/;
    return $k;
}

sub type_of_node {
    my $t = $_[0]{t};
    return $t eq 'number' ? ($_[0]{int} ? 'integer' : 'number') : $t;
}

my %INT_RANGE = (
    int32 => [ '-2147483648', '2147483647' ],
    int64 => [ '-9223372036854775808', '9223372036854775807' ],
);

sub int_cmp {    # compare two decimal integer strings exactly
    my ($x, $y) = @_;
    my $nx = ($x =~ s/\A-//) ? 1 : 0;
    my $ny = ($y =~ s/\A-//) ? 1 : 0;
    $nx = 0 if $x eq '0';
    $ny = 0 if $y eq '0';
    return $nx ? -1 : 1 if $nx != $ny;
    my $c = length($x) <=> length($y) || $x cmp $y;
    return $nx ? -$c : $c;
}

sub int_in_range {
    my ($raw, $lo, $hi) = @_;
    return int_cmp($raw, $lo) >= 0 && int_cmp($raw, $hi) <= 0;
}

# $v: {doc, errors=>[[field,msg]], unknown=>[], folded=>[]}
sub validate_node {
    my ($v, $schema, $node, $path) = @_;
    ($schema) = resolve_schema($v->{doc}, $schema);
    return unless ref $schema eq 'HASH';
    return if $node->{t} eq 'null';    # Go leaves the zero value; "required" is checked by the parent
    my $type = $schema->{type} // ($schema->{properties} ? 'object' : undef);
    return unless defined $type;       # free-form value
    my $got = type_of_node($node);
    my $err = sub { push @{ $v->{errors} }, [ $_[1] // $path, $_[0] ] };

    if ($type eq 'object') {
        return $err->("cannot unmarshal $got into field $path of type object") if $got ne 'object';
        my $props = $schema->{properties};
        my %fold = map { (go_fold($_) => $_) } keys %{ $props || {} };
        my %seen;    # property => key that set it
        for my $k (@{ $node->{keys} }) {
            my $child = $node->{v}{$k};
            my $prop = ($props && exists $props->{$k}) ? $k : $props ? $fold{ go_fold($k) } : undef;
            if (defined $prop) {
                if (exists $seen{$prop}) {
                    $err->("duplicate field $path.$prop (keys \"$seen{$prop}\" and \"$k\" differ only in case)",
                        "$path.$prop");
                    next;
                }
                $seen{$prop} = $k;
                push @{ $v->{folded} }, "$path.$k" if $prop ne $k;
                validate_node($v, $props->{$prop}, $child, "$path.$prop");
            } elsif (ref $schema->{additionalProperties} eq 'HASH') {
                validate_node($v, $schema->{additionalProperties}, $child, "$path\[$k\]");
            } elsif ($props) {
                push @{ $v->{unknown} }, "$path.$k";
            }
        }
        for my $req (@{ $schema->{required} || [] }) {
            my $key = $seen{$req};
            my $child = defined $key ? $node->{v}{$key} : undef;
            if (!$child || $child->{t} eq 'null' || ($child->{t} eq 'string' && $child->{v} eq '')) {
                $err->("$path.$req is a required field", "$path.$req");
            }
        }
        return;
    }
    if ($type eq 'array') {
        return $err->("cannot unmarshal $got into field $path of type array") if $got ne 'array';
        my $n = @{ $node->{v} };
        $err->("$path must contain at least $schema->{minItems} item(s)")
          if defined $schema->{minItems} && $n < $schema->{minItems};
        $err->("$path must contain at most $schema->{maxItems} item(s)")
          if defined $schema->{maxItems} && $n > $schema->{maxItems};
        if ($schema->{items}) {
            validate_node($v, $schema->{items}, $node->{v}[$_], "$path\[$_\]") for 0 .. $n - 1;
        }
        return;
    }
    if ($type eq 'string') {
        return $err->("cannot unmarshal $got into field $path of type string") if $got ne 'string';
        my $s = $node->{v};
        if ($schema->{enum} && !grep { defined $_ && !ref $_ && $_ eq $s } @{ $schema->{enum} }) {
            return $err->("$path must be one of [" . join(' ', @{ $schema->{enum} }) . "]");
        }
        $err->("$path must be at least $schema->{minLength} characters in length")
          if defined $schema->{minLength} && length($s) < $schema->{minLength};
        $err->("$path must be a maximum of $schema->{maxLength} characters in length")
          if defined $schema->{maxLength} && length($s) > $schema->{maxLength};
        return;
    }
    if ($type eq 'integer' || $type eq 'number') {
        my $datetime = ($schema->{format} // '') eq 'date-time';
        if ($datetime && $got eq 'string') {    # Stream sends and takes RFC 3339 strings
            $err->("$path: cannot parse \"$node->{v}\" as RFC 3339 time")
              unless $node->{v} =~ /\A\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d+)?(?:Z|[+-]\d\d:\d\d)\z/;
            return;
        }
        if ($type eq 'integer') {
            return $err->("cannot unmarshal $got into field $path of type integer")
              if $got ne 'integer';
            my $range = $INT_RANGE{ $schema->{format} // 'int64' } // $INT_RANGE{int64};
            return $err->("cannot unmarshal number $node->{raw} into field $path of type integer"
                  . " (out of range)") unless int_in_range($node->{raw}, @$range);
        } else {
            return $err->("cannot unmarshal $got into field $path of type number")
              if $got ne 'integer' && $got ne 'number';
        }
        my $x = 0 + $node->{raw};
        $err->("$path must be $schema->{minimum} or greater")
          if defined $schema->{minimum} && $x < $schema->{minimum};
        $err->("$path must be $schema->{maximum} or less")
          if defined $schema->{maximum} && $x > $schema->{maximum};
        if ($schema->{enum} && !grep { defined $_ && $_ == $x } @{ $schema->{enum} }) {
            $err->("$path must be one of [" . join(' ', @{ $schema->{enum} }) . "]");
        }
        return;
    }
    if ($type eq 'boolean') {
        $err->("cannot unmarshal $got into field $path of type boolean") if $got ne 'boolean';
        return;
    }
    return;
}

# --------------------------------------------------------------------------
# JWT

sub b64url_decode {
    my ($s) = @_;
    return undef unless defined $s && $s =~ /\A[A-Za-z0-9_-]*\z/ && length($s) % 4 != 1;
    (my $t = $s) =~ tr{-_}{+/};
    $t .= '=' x ((4 - length($t) % 4) % 4);
    return decode_base64($t);
}

sub b64url_encode {
    my $s = encode_base64($_[0], '');
    $s =~ tr{+/}{-_};
    $s =~ s/=+\z//;
    return $s;
}

sub const_eq {
    my ($a, $b) = @_;
    return 0 unless length $a == length $b;
    my $r = 0;
    $r |= ord(substr $a, $_, 1) ^ ord(substr $b, $_, 1) for 0 .. length($a) - 1;
    return $r == 0;
}

# Returns {kind => server|user|none|invalid, payload, header, code, message}
sub analyse_token {
    my ($values) = @_;
    my $json = JSON::PP->new->utf8;
    my %r = (kind => 'invalid', payload => undef, header => undef);
    my $bad = sub { @r{qw(code message)} = @_; return \%r };
    if (!$values || !@$values) {
        $r{kind} = 'none';
        return $bad->(5, 'JWTAuth error: token is not present in the Authorization header');
    }
    return $bad->(5, 'JWTAuth error: more than one Authorization header') if @$values > 1;
    my $tok = $values->[0];
    $tok =~ s/\ABearer //;
    my @p = split /\./, $tok, -1;
    return $bad->(5, 'JWTAuth error: token contains an invalid number of segments') if @p != 3;
    my ($hb, $pb) = (b64url_decode($p[0]), b64url_decode($p[1]));
    return $bad->(5, 'JWTAuth error: token is malformed: could not base64 decode')
      unless defined $hb && defined $pb && defined b64url_decode($p[2]);
    my $h  = eval { $json->decode($hb) };
    my $pl = eval { $json->decode($pb) };
    $r{header}  = $h  if ref $h eq 'HASH';
    $r{payload} = $pl if ref $pl eq 'HASH';
    return $bad->(5, 'JWTAuth error: token is malformed: invalid header') unless ref $h eq 'HASH';
    my $alg = $h->{alg} // '';
    return $bad->(5, "JWTAuth error: signing method " . (ref $alg ? 'invalid' : $alg) . " is invalid")
      unless !ref $alg && $alg eq 'HS256';
    my $want = b64url_encode(hmac_sha256("$p[0].$p[1]", $opt{api_secret}));
    return $bad->(43, 'JWTAuth error: token signature is invalid') unless const_eq($want, $p[2]);
    return $bad->(5, 'JWTAuth error: token is malformed: invalid payload') unless ref $pl eq 'HASH';
    my $now = int time;
    for my $c (qw(exp nbf iat)) {
        next unless exists $pl->{$c};
        return $bad->(5, "JWTAuth error: token is malformed: $c is not a number")
          if ref $pl->{$c} || !defined $pl->{$c} || $pl->{$c} !~ /\A-?\d+(?:\.\d+)?(?:[eE][+-]?\d+)?\z/;
    }
    return $bad->(40, 'JWTAuth error: token has expired') if exists $pl->{exp} && $now > $pl->{exp};
    return $bad->(41, 'JWTAuth error: token is not valid yet') if exists $pl->{nbf} && $now < $pl->{nbf};
    return $bad->(42, 'JWTAuth error: token used before issue at (iat)')
      if exists $pl->{iat} && $now < $pl->{iat};
    if (exists $pl->{user_id}) {
        return $bad->(5, 'JWTAuth error: user_id claim is not a non-empty string')
          unless defined $pl->{user_id} && !ref $pl->{user_id} && length $pl->{user_id}
          && !JSON::PP::is_bool($pl->{user_id});
        $r{kind} = 'user';
        return \%r;
    }
    if (JSON::PP::is_bool($pl->{server}) && $pl->{server}) {
        $r{kind} = 'server';
        return \%r;
    }
    return $bad->(5, 'JWTAuth error: token has neither a user_id nor a server claim');
}

# --------------------------------------------------------------------------
# State shared by the forked children: the record file and the task file.

sub with_lock {
    my ($file, $cb) = @_;
    sysopen(my $fh, $file, O_RDWR | O_CREAT, 0644) or die "stream-emu: $file: $!\n";
    flock($fh, LOCK_EX) or die "stream-emu: flock $file: $!\n";
    my @r = $cb->($fh);
    close $fh;
    return wantarray ? @r : $r[0];
}

sub slurp_fh {
    my ($fh) = @_;
    sysseek($fh, 0, SEEK_SET);
    my $data = '';
    1 while sysread($fh, $data, 65536, length $data);
    return $data;
}

sub record {
    my ($rec) = @_;
    return unless defined $opt{record};
    with_lock($opt{record}, sub {
        my $fh = shift;
        # seq = records in the file + 1; "$record.seq" caches "size seq" so
        # the file is only counted when someone else changed it (truncated)
        my $size = (stat $fh)[7];
        my $seq;
        if (open my $sf, '<', "$opt{record}.seq") {
            my ($sz, $n) = split ' ', (<$sf> // '');
            $seq = $n + 1 if defined $n && $sz == $size;
        }
        if (!defined $seq) {
            my $n = 0;
            sysseek($fh, 0, SEEK_SET);
            my $buf;
            while (sysread($fh, $buf, 65536)) { $n += ($buf =~ tr/\n//) }
            $seq = $n + 1;
        }
        $rec->{seq} = $seq;
        my $line = $JSON_OUT->encode($rec) . "\n";
        sysseek($fh, 0, SEEK_END);
        my $off = 0;
        while ($off < length $line) {
            my $w = syswrite($fh, $line, length($line) - $off, $off);
            die "stream-emu: write $opt{record}: $!\n" unless defined $w;
            $off += $w;
        }
        if (open my $sf, '>', "$opt{record}.seq") {
            print $sf $size + length($line), " $seq\n";
            close $sf;
        }
    });
}

my $TASK_FILE = ($opt{record} // File::Spec->catfile(File::Spec->tmpdir, "stream-emu-$$")) . '.tasks';

sub task_file { $TASK_FILE }

sub tasks_update {    # $cb->(\%tasks) may modify; saved back
    my ($cb) = @_;
    return with_lock(task_file(), sub {
        my $fh = shift;
        my $data = slurp_fh($fh);
        my $tasks = length $data ? (eval { JSON::PP->new->utf8->decode($data) } || {}) : {};
        my @r = $cb->($tasks);
        my $out = JSON::PP->new->utf8->canonical->encode($tasks);
        truncate($fh, 0);
        sysseek($fh, 0, SEEK_SET);
        syswrite($fh, $out);
        return @r;
    });
}

my $ID_COUNTER = 0;

sub new_uuid {
    my $h = sha1_hex(join ':', time, $$, ++$ID_COUNTER, rand());
    return sprintf '%s-%s-4%s-a%s-%s', substr($h, 0, 8), substr($h, 8, 4), substr($h, 12, 3),
      substr($h, 15, 3), substr($h, 18, 12);
}

sub iso_time {
    my ($t) = @_;
    $t //= time;
    return strftime('%Y-%m-%dT%H:%M:%S', gmtime int $t) . sprintf('.%06dZ', ($t - int $t) * 1e6);
}

# --------------------------------------------------------------------------
# Answers: Stream-shaped bodies built from the response schema (every
# required field, plausible values), plus special cases.

sub example_value {
    my ($doc, $schema, $name, $depth) = @_;
    ($schema) = resolve_schema($doc, $schema);
    $schema = {} unless ref $schema eq 'HASH';
    my $type = $schema->{type} // ($schema->{properties} ? 'object' : '');
    my $fmt  = $schema->{format} // '';
    if ($type eq 'object') {
        my %o;
        return \%o if $depth > 6;
        for my $f (@{ $schema->{required} || [] }) {
            $o{$f} = example_value($doc, $schema->{properties}{$f} // {}, $f, $depth + 1);
        }
        return \%o;
    }
    return [] if $type eq 'array';
    return iso_time() if $fmt eq 'date-time';
    return JSON::PP::false if $type eq 'boolean';
    return 0 if $type eq 'integer' || $type eq 'number';
    if ($type eq 'string') {
        return $schema->{enum}[0] if $schema->{enum} && @{ $schema->{enum} };
        return '0.42ms' if $name eq 'duration';
        return 'user' if $name eq 'role';
        return 'emu-' . new_uuid() if $name eq 'id' || $name =~ /_id\z/;
        return '';
    }
    return undef;
}

sub user_response {
    my ($doc, $id, %extra) = @_;
    my ($s) = resolve_schema($doc, { '$ref' => '#/components/schemas/UserResponse' });
    my $u = example_value($doc, $s, 'user', 0);
    $u->{id} = $id;
    $u->{custom} = {};
    $u->{language} = 'en';
    return { %$u, %extra };
}

sub body_field {    # top-level string field of the parsed request body
    my ($ctx, $name) = @_;
    my $n = $ctx->{body_node};
    return undef unless $n && $n->{t} eq 'object';
    for my $k (@{ $n->{keys} }) {
        next unless go_fold($k) eq go_fold($name);
        my $c = $n->{v}{$k};
        return $c->{t} eq 'string' ? $c->{v}
             : $c->{t} eq 'array'  ? [ map { $_->{t} eq 'string' ? $_->{v} : undef } @{ $c->{v} } ]
             : undef;
    }
    return undef;
}

sub success_answer {
    my ($ctx) = @_;
    my $op  = $ctx->{op};
    my $doc = $ctx->{doc};
    my ($status) = sort { $a <=> $b } grep { /\A2\d\d\z/ } keys %{ $op->{responses} || {} };
    $status //= 200;
    my $schema = $op->{responses}{$status}{content}{'application/json'}{schema};
    my $body = $schema ? example_value($doc, $schema, '', 0) : {};
    $body = {} unless ref $body eq 'HASH';
    $body->{duration} = '0.42ms';
    my $id  = $op->{operationId} // '';
    my $now = time;

    if ($id eq 'DeactivateUsers' || $id eq 'ReactivateUsers' || $id eq 'ExportUsers') {
        my $task_id = new_uuid();
        my $ids = body_field($ctx, 'user_ids');
        tasks_update(sub {
            $_[0]{$task_id} = {
                kind => $id, created_at => $now, polls => 0,
                user_ids => (ref $ids eq 'ARRAY' ? $ids : []),
            };
        });
        $body->{task_id} = $task_id;
    } elsif ($id eq 'GetTask') {
        my $task_id = $ctx->{path_params}{id};
        my $t = tasks_update(sub {
            my $t = $_[0]{$task_id} or return undef;
            $t->{polls}++;
            return {%$t};
        });
        refuse(404, 16, "GetTask failed with error: \"task $task_id does not exist\"") unless $t;
        $body->{task_id}    = $task_id;
        $body->{created_at} = iso_time($t->{created_at});
        if ($t->{polls} <= 1) {
            $body->{status}     = 'pending';
            $body->{updated_at} = iso_time($t->{created_at});
        } else {
            $body->{status}     = 'completed';
            $body->{updated_at} = iso_time($now);
            $body->{result} = $t->{kind} eq 'ExportUsers'
              ? { url => "https://emu.invalid/exports/$task_id.json" }
              : { succeeded_user_ids => $t->{user_ids}, failed_user_ids => [] };
        }
    } elsif ($id eq 'GetBlockedUsers') {
        $body->{blocks} = [];
    } elsif ($id eq 'DeactivateUser') {
        $body->{user} = user_response($doc, $ctx->{path_params}{user_id},
            deactivated_at => iso_time($now));
    } elsif ($id eq 'ReactivateUser') {
        $body->{user} = user_response($doc, $ctx->{path_params}{user_id});
    } elsif ($id eq 'BlockUsers') {
        $body->{blocked_user_id}    = body_field($ctx, 'blocked_user_id') // '';
        $body->{blocked_by_user_id} = body_field($ctx, 'user_id')
          // ($ctx->{auth}{kind} eq 'user' ? $ctx->{auth}{payload}{user_id} : '');
        $body->{created_at} = iso_time($now);
    } elsif ($id eq 'mute') {
        $body->{non_existing_users} = [];
    }
    return ($status, $JSON_OUT->encode($body));
}

# --------------------------------------------------------------------------
# Request checks, in Stream's order. Fills $rec; returns (status, body) or
# dies with a refusal.

sub url_decode {
    my ($s) = @_;
    $s =~ s/%([0-9A-Fa-f]{2})/chr hex $1/ge;
    return $s;
}

sub parse_query {
    my ($raw) = @_;
    my (@pairs, %q);
    return ([], {}) unless defined $raw && length $raw;
    for my $part (split /&/, $raw, -1) {
        next if $part eq '';
        my ($k, $v) = split /=/, $part, 2;
        $v //= '';
        tr/+/ / for $k, $v;
        ($k, $v) = (url_decode($k), url_decode($v));
        push @pairs, [ $k, $v ];
        push @{ $q{$k} }, $v;
    }
    return (\@pairs, \%q);
}

sub check_request {
    my ($req, $rec, $ctx) = @_;
    my $h = $req->{headers};

    # 1. api_key
    my $keys = $rec->{query}{api_key} || [];
    refuse(401, 2, 'api_key not valid') if @$keys != 1 || $keys->[0] ne $opt{api_key};

    # 2. stream-auth-type
    my $sat = $h->{'stream-auth-type'} || [];
    refuse(401, 5, 'Stream-Auth-Type header is missing or invalid, it must be "jwt"')
      if @$sat != 1 || lc($sat->[0]) ne 'jwt';

    # 3. JWT
    my $auth = $ctx->{auth};
    refuse(401, $auth->{code}, $auth->{message}) if $auth->{kind} ne 'server' && $auth->{kind} ne 'user';

    # 4. route
    my $path = $req->{path};
    refuse(404, 16, "Not found: $req->{method} $path") unless $path =~ m{\A/};
    my @segs = map { url_decode($_) } split m{/}, $path, -1;
    my $method = lc $req->{method};
    my $side = $auth->{kind} eq 'server' ? 'server' : 'client';
    my $r = match_route($side, \@segs);
    if (!$r || !$r->{methods}{$method}) {
        if ($side eq 'client') {
            my $rs = match_route('server', \@segs);
            if ($rs && $rs->{methods}{$method}) {
                my $oid = $rs->{methods}{$method}{op}{operationId} // 'this endpoint';
                refuse(403, 17, "$oid failed with error: \"this endpoint is only available"
                      . " server-side, a user token is not allowed\"");
            }
        }
        if ($r) {
            my @allow = sort map { uc } keys %{ $r->{methods} };
            refuse(405, 4, "Method $req->{method} is not allowed for $path", allow => join(', ', @allow));
        }
        my $note = '';
        if ($side eq 'server') {
            my $rc = match_route('client', \@segs);
            $note = ' (a client-side endpoint: it needs a user token)' if $rc && $rc->{methods}{$method};
        }
        refuse(404, 16, "Not found: $req->{method} $path$note");
    }
    my $m = $r->{methods}{$method};
    my ($op, $doc) = ($m->{op}, $m->{doc});
    my $oid = $op->{operationId} // 'request';
    @$ctx{qw(op doc)} = ($op, $doc);
    $rec->{operation} = $oid;
    $rec->{template}  = $r->{template};
    $rec->{spec_side} = $side;

    # 5. parameters
    my $fail = sub {
        my ($field, $msg) = @_;
        refuse(400, 4, "$oid failed with error: \"$msg\"", exception_fields => { $field => $msg });
    };
    my %pp;
    my @tsegs = @{ $r->{segs} };
    for my $i (0 .. $#tsegs) {
        $pp{$1} = $segs[$i] if $tsegs[$i] =~ /\A\{([^}]+)\}\z/;
    }
    $ctx->{path_params} = $rec->{path_params} = \%pp;
    my %declared;
    for my $p (@{ $op->{parameters} || [] }) {
        my ($ps) = resolve_schema($doc, $p->{schema} // {});
        if ($p->{in} eq 'path') {
            my $val = $pp{ $p->{name} } // '';
            $fail->($p->{name}, "$p->{name} is a required field") if $val eq '';
            $fail->($p->{name}, "$p->{name} must be a maximum of $ps->{maxLength} characters in length")
              if defined $ps->{maxLength} && length($val) > $ps->{maxLength};
            $fail->($p->{name}, "$p->{name} must be at least $ps->{minLength} characters in length")
              if defined $ps->{minLength} && length($val) < $ps->{minLength};
        } elsif ($p->{in} eq 'query') {
            $declared{ $p->{name} } = [ $p, $ps ];
        }
    }
    for my $pair (@{ $ctx->{query_pairs} }) {
        my $k = $pair->[0];
        next if $k eq 'api_key';
        $fail->($k, "unknown query parameter $k") unless $declared{$k};
    }
    for my $name (sort keys %declared) {
        my ($p, $ps) = @{ $declared{$name} };
        my $vals = $rec->{query}{$name} || [];
        $fail->($name, "query parameter $name is given more than once") if @$vals > 1;
        if (!@$vals || $vals->[0] eq '') {
            $fail->($name, "$name is a required field") if $p->{required};
            next;
        }
        my $val = $vals->[0];
        my $t = $ps->{type} // 'string';
        $fail->($name, "$name must be an integer") if $t eq 'integer' && $val !~ /\A-?\d+\z/;
        $fail->($name, "$name must be a number")
          if $t eq 'number' && $val !~ /\A-?\d+(?:\.\d+)?(?:[eE][+-]?\d+)?\z/;
        $fail->($name, "$name must be a boolean") if $t eq 'boolean' && $val !~ /\A(?:true|false|1|0)\z/;
        $fail->($name, "$name must be a maximum of $ps->{maxLength} characters in length")
          if $t eq 'string' && defined $ps->{maxLength} && length($val) > $ps->{maxLength};
        $fail->($name, "$name must be one of [" . join(' ', @{ $ps->{enum} }) . "]")
          if $ps->{enum} && !grep { $_ eq $val } @{ $ps->{enum} };
    }

    # 6. body
    my $rb = $op->{requestBody};
    my $bschema = $rb && $rb->{content} && $rb->{content}{'application/json'}
      ? $rb->{content}{'application/json'}{schema} : undef;
    if ($bschema) {
        my $body = $req->{body};
        my $node;
        if (length $body) {
            my $ct = $h->{'content-type'} || [];
            refuse(400, 4, "$oid failed with error: \"Content-Type must be application/json\"")
              unless @$ct == 1 && $ct->[0] =~ m{\A\s*application/json\s*(?:;.*)?\z}i;
            refuse(400, 4, "$oid failed with error: \"request body is not valid UTF-8\"")
              unless valid_utf8($body);
            my $chars = $body;
            utf8::decode($chars);
            $node = eval { json_parse($chars) };
            if (!$node) {
                (my $e = $@) =~ s/\n\z//;
                refuse(400, 4, "$oid failed with error: \"invalid request body: $e\"");
            }
        } else {
            $node = { t => 'object', keys => [], v => {} };    # empty body counts as {}
        }
        $ctx->{body_node} = $node;
        my ($s, $sname) = resolve_schema($doc, $bschema, $oid . 'Request');
        refuse(400, 4, "$oid failed with error: \"request body must be a JSON object\"")
          unless $node->{t} eq 'object';
        my $v = { doc => $doc, errors => [], unknown => [], folded => [] };
        validate_node($v, $s, $node, $sname);
        $rec->{unknown_fields} = [ map { s/\A\Q$sname\E\.//r } @{ $v->{unknown} } ];
        $rec->{case_folded_fields} = [ map { s/\A\Q$sname\E\.//r } @{ $v->{folded} } ]
          if @{ $v->{folded} };
        if (@{ $v->{errors} }) {
            $rec->{validation_errors} = [ map { $_->[1] } @{ $v->{errors} } ];
            my %ef;
            for (@{ $v->{errors} }) {
                (my $f = $_->[0]) =~ s/\A\Q$sname\E\.?//;
                $ef{ length $f ? $f : $sname } //= $_->[1];
            }
            refuse(400, 4, "$oid failed with error: \"" . join('; ', map { $_->[1] } @{ $v->{errors} }) . '"',
                exception_fields => \%ef);
        }
    }
    return success_answer($ctx);
}

# --------------------------------------------------------------------------
# HTTP server

my %KIDS;
my $STOPPING = 0;

sub http_date { strftime('%a, %d %b %Y %H:%M:%S GMT', gmtime) }

sub read_control {
    return undef unless defined $opt{control} && -e $opt{control};
    open my $fh, '<:raw', $opt{control} or return undef;
    local $/;
    my $c = eval { JSON::PP->new->utf8->decode(<$fh> // '') };
    warn "stream-emu: ignoring unreadable control file $opt{control}\n" if !$c && $@;
    return ref $c eq 'HASH' ? $c : undef;
}

sub build_response {
    my ($status, $headers, $body, $close) = @_;
    my $out = "HTTP/1.1 $status " . ($REASON{$status} // 'Status') . "\r\n";
    $out .= "$_->[0]: $_->[1]\r\n" for @$headers;
    $out .= "Content-Length: " . length($body) . "\r\n";
    $out .= "Date: " . http_date() . "\r\n";
    $out .= "Connection: " . ($close ? 'close' : 'keep-alive') . "\r\n\r\n";
    return ($out, $body);
}

sub write_all {
    my ($sock, $data) = @_;
    my $off = 0;
    while ($off < length $data) {
        my $w = syswrite($sock, $data, length($data) - $off, $off);
        if (!defined $w) { next if $!{EINTR}; return 0 }
        $off += $w;
    }
    return 1;
}

# buffered reader over a socket with a deadline
sub fill {
    my ($c, $timeout) = @_;
    my $sel = IO::Select->new($c->{sock});
    my $deadline = time + $timeout;
    while (1) {
        my $left = $deadline - time;
        return 0 if $left <= 0;
        next unless $sel->can_read($left);
        my $n = sysread($c->{sock}, $c->{buf}, 65536, length $c->{buf});
        next if !defined $n && $!{EINTR};
        return 0 unless $n;
        return 1;
    }
}

sub read_line {    # for chunked bodies
    my ($c, $timeout) = @_;
    while (1) {
        my $i = index($c->{buf}, "\n");
        if ($i >= 0) {
            my $line = substr($c->{buf}, 0, $i + 1, '');
            $line =~ s/\r?\n\z//;
            return $line;
        }
        die { http => 400, why => 'chunk line too long' } if length $c->{buf} > 8192;
        fill($c, $timeout) or die { http => 400, why => 'unexpected end of chunked body', eof => 1 };
    }
}

sub read_bytes {
    my ($c, $n, $timeout) = @_;
    while (length $c->{buf} < $n) {
        fill($c, $timeout) or die { http => 400, why => 'unexpected end of request body', eof => 1 };
    }
    return substr($c->{buf}, 0, $n, '');
}

use constant MAX_BODY => 8 * 1024 * 1024;

# Reads one request; returns undef on a clean close between requests.
sub read_request {
    my ($c) = @_;
    my $idle = 75;
    while (1) {
        $c->{buf} =~ s/\A(?:\r?\n)+//;    # tolerate stray CRLF between requests
        last if $c->{buf} =~ /\r?\n\r?\n/;
        die { http => 431, why => 'request header too large' } if length $c->{buf} > 65536;
        if (!fill($c, length $c->{buf} ? 30 : $idle)) {
            return undef unless length $c->{buf};
            die { http => 400, why => 'connection closed inside the request header', eof => 1 };
        }
    }
    $c->{buf} =~ s/\A(.*?)\r?\n\r?\n//s;
    my $head = $1;
    my $t0 = time;
    my @lines = split /\r?\n/, $head, -1;
    my $rl = shift @lines;
    my %req = (time => $t0, headers => {}, header_order => [], header_list => [], body => '');
    my ($m, $target, $ver) = $rl =~ m{\A([!#$%&'*+.^_`|~0-9A-Za-z-]+) (\S+) HTTP/(\d\.\d)\z}
      or die { http => 400, why => "malformed request line", req => \%req, raw_line => $rl };
    @req{qw(method target http_version)} = ($m, $target, $ver);
    die { http => 505, why => "HTTP version $ver not supported", req => \%req } if $ver !~ /\A1\.[01]\z/;
    for my $l (@lines) {
        die { http => 400, why => 'obsolete header line folding', req => \%req } if $l =~ /\A[ \t]/;
        my ($n, $v) = $l =~ /\A([!#$%&'*+.^_`|~0-9A-Za-z-]+):[ \t]*(.*?)[ \t]*\z/
          or die { http => 400, why => "malformed header line", req => \%req };
        push @{ $req{header_order} }, $n;
        push @{ $req{header_list} }, [ $n, $v ];
        push @{ $req{headers}{ lc $n } }, $v;
    }
    my ($path, $query) = $target =~ /\A([^?]*)(?:\?(.*))?\z/s;
    @req{qw(path raw_query)} = ($path, $query);
    my $h = $req{headers};
    die { http => 400, why => 'missing Host header', req => \%req } if $ver eq '1.1' && !$h->{host};
    die { http => 400, why => 'more than one Host header', req => \%req } if $h->{host} && @{ $h->{host} } > 1;

    # keep-alive?
    my %conn = map { (lc($_) => 1) } map { split /\s*,\s*/ } @{ $h->{connection} || [] };
    $req{close} = $ver eq '1.0' ? !$conn{'keep-alive'} : !!$conn{close};

    # body
    my $te = $h->{'transfer-encoding'};
    my $cl = $h->{'content-length'};
    if ($te) {
        die { http => 400, why => 'both Transfer-Encoding and Content-Length', req => \%req } if $cl;
        die { http => 501, why => 'unsupported Transfer-Encoding', req => \%req }
          unless @$te == 1 && lc($te->[0]) eq 'chunked';
        my $body = '';
        while (1) {
            my $line = read_line($c, 30);
            my ($size) = $line =~ /\A([0-9A-Fa-f]+)[ \t]*(?:;.*)?\z/
              or die { http => 400, why => 'malformed chunk size', req => \%req };
            die { http => 413, why => 'body too large', req => \%req } if length($size) > 8 || hex($size) > MAX_BODY;
            $size = hex $size;
            last if $size == 0;
            $body .= read_bytes($c, $size, 30);
            die { http => 413, why => 'body too large', req => \%req } if length $body > MAX_BODY;
            my $crlf = read_line($c, 30);
            die { http => 400, why => 'missing CRLF after chunk data', req => \%req } if $crlf ne '';
        }
        while (1) {    # trailers
            my $line = read_line($c, 30);
            last if $line eq '';
        }
        $req{body} = $body;
        $req{chunked} = 1;
    } elsif ($cl) {
        my %u = map { $_ => 1 } map { split /\s*,\s*/ } @$cl;
        my @u = keys %u;
        die { http => 400, why => 'conflicting Content-Length', req => \%req } if @u != 1 || $u[0] !~ /\A\d+\z/;
        die { http => 413, why => 'body too large', req => \%req } if length($u[0]) > 9 || $u[0] > MAX_BODY;
        if ($h->{expect} && lc($h->{expect}[0]) eq '100-continue' && $u[0] > length $c->{buf}) {
            write_all($c->{sock}, "HTTP/1.1 100 Continue\r\n\r\n");
        }
        $req{body} = read_bytes($c, $u[0], 30);
    }
    return \%req;
}

sub base_record {
    my ($req, $c) = @_;
    my %rec = (
        time         => $req->{time} // time,
        conn         => $c->{id},
        conn_request => $c->{nreq},
        method       => $req->{method},
        path         => $req->{path},
        raw_query    => $req->{raw_query},
        http_version => $req->{http_version},
        headers      => $req->{headers} || {},
        header_order => $req->{header_order} || [],
    );
    my ($pairs, $q) = parse_query($req->{raw_query});
    $rec{query} = $q;
    my $body = $req->{body} // '';
    if (valid_utf8($body)) {
        my $chars = $body;
        utf8::decode($chars);
        @rec{qw(body body_encoding)} = ($chars, 'utf-8');
    } else {
        @rec{qw(body body_encoding)} = ($body, 'latin1');    # one char per byte
    }
    $rec{chunked} = JSON::PP::true if $req->{chunked};
    return (\%rec, $pairs);
}

sub handle_request {
    my ($c, $req) = @_;
    my ($rec, $pairs) = base_record($req, $c);
    my $auth = analyse_token($req->{headers}{authorization});
    $rec->{auth} = { kind => $auth->{kind}, payload => $auth->{payload}, header => $auth->{header} };
    my $ctx = { auth => $auth, query_pairs => $pairs };

    my $ctl = read_control();
    if ($ctl && defined $ctl->{path_prefix} && index($req->{path}, $ctl->{path_prefix}) != 0) {
        $ctl = undef;
    }

    my ($status, $body, @hdrs);
    my $ok = eval { ($status, $body) = check_request($req, $rec, $ctx); 1 };
    if (!$ok) {
        my $e = $@;
        if (!(ref $e eq 'HASH' && $e->{status})) {
            warn "stream-emu[$$]: internal error: $e";
            $e = { status => 500, code => -1, message => "stream-emu internal error: $e" };
        }
        $status = $e->{status};
        $body   = api_error_body($e);
        $rec->{code}  = $e->{code};
        $rec->{error} = $e->{message};
        push @hdrs, [ 'Allow', $e->{allow} ] if $e->{allow};
    }
    push @hdrs, [ 'Content-Type', 'application/json;charset=utf-8' ];
    if ($auth->{kind} eq 'server' || $auth->{kind} eq 'user') {
        push @hdrs, [ 'X-RateLimit-Limit', 1000 ], [ 'X-RateLimit-Remaining', 999 ],
          [ 'X-RateLimit-Reset', int(time) + 60 ];
    }
    my $close = $req->{close};

    if ($ctl) {
        $rec->{fault} = $ctl;
        sleep($ctl->{delay_ms} / 1000) if $ctl->{delay_ms};
        if (defined $ctl->{status}) {
            $rec->{validated_status} = $status;
            $status = $ctl->{status} + 0;
            $body   = $ctl->{body} // '';
            $body = $JSON_OUT->encode($body) if ref $body;
            utf8::encode($body) if utf8::is_utf8($body);
            @hdrs = ([ 'Content-Type', $ctl->{content_type} // 'application/json;charset=utf-8' ]);
            push @hdrs, [ $_, $ctl->{headers}{$_} ] for sort keys %{ $ctl->{headers} || {} };
        }
    }
    $rec->{status} = $status;
    record($rec);
    log_line($rec);

    if ($ctl && $ctl->{close}) {
        return 0;
    }
    my ($head, $b) = build_response($status, \@hdrs, $body, $close);
    if ($ctl && $ctl->{reset_mid_response}) {
        write_all($c->{sock}, $head . substr($b, 0, int(length($b) / 2)));
        if ($ctl->{rst}) {
            setsockopt($c->{sock}, SOL_SOCKET, SO_LINGER, pack('ii', 1, 0));
        }
        return 0;
    }
    write_all($c->{sock}, $head . $b) or return 0;
    return !$close;
}

sub log_line {
    my ($rec) = @_;
    return unless $opt{verbose};
    printf STDOUT "%s %s %s%s -> %s %s\n", iso_time($rec->{time}), $rec->{method} // '-',
      $rec->{path} // '-', defined $rec->{raw_query} ? "?$rec->{raw_query}" : '', $rec->{status},
      $rec->{error} // '';
}

sub handle_connection {
    my ($sock, $serial) = @_;
    my $c = { sock => $sock, buf => '', id => "$$-$serial", nreq => 0 };
    while (1) {
        $c->{nreq}++;
        my $req = eval { read_request($c) };
        if (my $e = $@) {
            die $e unless ref $e eq 'HASH' && $e->{http};
            my $r = $e->{req} || {};
            my ($rec) = base_record($r, $c);
            $rec->{status} = $e->{http};
            $rec->{error}  = "malformed HTTP request: $e->{why}";
            $rec->{request_line} = $e->{raw_line} if defined $e->{raw_line};
            my ($ct, $msg) = ('text/plain; charset=utf-8', "$e->{http} " . ($REASON{ $e->{http} } // 'Bad Request'));
            if ($e->{http} == 413) {    # Stream's own limit answers an APIError
                $rec->{code} = 22;
                ($ct, $msg) = ('application/json;charset=utf-8',
                    api_error_body({ status => 413, code => 22, message => 'Payload too big' }));
            }
            record($rec);
            log_line($rec);
            my ($head, $b) = build_response($e->{http}, [ [ 'Content-Type', $ct ] ], $msg, 1);
            write_all($sock, $head . $b) unless $e->{eof};
            last;
        }
        last unless $req;
        last unless handle_request($c, $req);
    }
    shutdown($sock, 1);
    close $sock;
}

# --------------------------------------------------------------------------
# main

my $server = IO::Socket::INET->new(
    LocalAddr => $LHOST,
    LocalPort => $LPORT,
    Proto     => 'tcp',
    Listen    => 128,
    ReuseAddr => 1,
) or die "stream-emu: cannot listen on $LHOST:$LPORT: $@\n";

if (defined $opt{pidfile}) {
    open my $fh, '>', $opt{pidfile} or die "stream-emu: $opt{pidfile}: $!\n";
    print $fh "$$\n";
    close $fh;
}
STDOUT->autoflush(1);

$SIG{PIPE} = 'IGNORE';
$SIG{CHLD} = sub {
    while ((my $pid = waitpid(-1, WNOHANG)) > 0) { delete $KIDS{$pid} }
};
$SIG{TERM} = $SIG{INT} = sub { $STOPPING = 1 };

my $serial = 0;
while (!$STOPPING) {
    my $sock = $server->accept;
    if (!$sock) {
        next if $STOPPING || $!{EINTR} || $!{ECONNABORTED};
        warn "stream-emu: accept: $!\n";
        sleep 0.05;
        next;
    }
    $serial++;
    my $pid = fork;
    if (!defined $pid) {
        warn "stream-emu: fork: $!\n";
        close $sock;
        next;
    }
    if ($pid == 0) {
        $SIG{CHLD} = 'DEFAULT';
        $SIG{TERM} = $SIG{INT} = 'DEFAULT';
        close $server;
        eval { handle_connection($sock, $serial); 1 }
          or warn "stream-emu[$$]: " . (ref $@ ? JSON::PP->new->allow_nonref->allow_blessed->encode($@) : $@);
        POSIX::_exit(0);
    }
    $KIDS{$pid} = 1;
    close $sock;
}

# shutting down: stop the connection handlers too
close $server;
kill 'TERM', keys %KIDS if %KIDS;
my $deadline = time + 2;
while (%KIDS && time < $deadline) {
    while ((my $pid = waitpid(-1, WNOHANG)) > 0) { delete $KIDS{$pid} }
    sleep 0.02 if %KIDS;
}
kill 'KILL', keys %KIDS if %KIDS;
unlink $opt{pidfile} if defined $opt{pidfile};
exit 0;
