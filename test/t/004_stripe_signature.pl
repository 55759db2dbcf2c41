# verify_stripe_signature against signatures computed outside PostgreSQL,
# with `openssl dgst -sha256 -hmac`, as Stripe computes them.
use strict;
use warnings;
use utf8;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

my $node = PostgreSQL::Test::Cluster->new('sig');
$node->init;
$node->start;
$node->safe_psql('postgres', 'CREATE EXTENSION tiermeter');
my $dir = PostgreSQL::Test::Utils::tempdir;

# hex(HMAC-SHA256(secret, "<t>.<payload>")) by openssl, from a file so that
# the payload's bytes are exactly what is signed
sub openssl_sig
{
	my ($secret, $t, $payload) = @_;
	open my $fh, '>:raw', "$dir/signed" or die;
	print $fh "$t.";
	print $fh $payload;
	close $fh;
	my $out = `openssl dgst -sha256 -hmac '$secret' "$dir/signed"`;
	$out =~ /= ([0-9a-f]{64})\s*$/ or die "openssl: $out";
	return $1;
}

# SQL literal of a string, via dollar quoting
sub lit { return '$lit$' . $_[0] . '$lit$'; }

sub verify
{
	my ($payload, $header, $secret, $at, $tolerance) = @_;
	$tolerance //= 300;
	open my $fh, '>:raw', "$dir/q.sql" or die;
	print $fh "SELECT tiermeter.verify_stripe_signature(" . lit($payload) . ', '
	  . (defined $header ? lit($header) : 'NULL') . ', ' . lit($secret)
	  . ", $tolerance, to_timestamp($at));\n";
	close $fh;
	my ($ret, $stdout, $stderr) = $node->psql('postgres', undef,
		extra_params => [ '-f', "$dir/q.sql" ]);
	die "psql: $stderr" if $ret != 0;
	return $stdout;
}

my $secret = 'whsec_test_secret_123';
my $t = 1700000000;
my $payload = '{"id":"evt_1","object":"event","type":"customer.subscription.updated"}';
my $sig = openssl_sig($secret, $t, $payload);

is(verify($payload, "t=$t,v1=$sig", $secret, $t), 't', 'a signature made by openssl is valid');
is(verify($payload, "t=$t,v1=$sig", $secret, $t + 300), 't', 'valid at the edge of the tolerance, after');
is(verify($payload, "t=$t,v1=$sig", $secret, $t - 300), 't', 'valid at the edge of the tolerance, before');
is(verify($payload, "t=$t,v1=$sig", $secret, $t + 301), 'f', 'too old');
is(verify($payload, "t=$t,v1=$sig", $secret, $t - 301), 'f', 'too far ahead');
is(verify($payload, "t=$t,v1=$sig", $secret, $t + 3600, 7200), 't', 'a wider tolerance');
is(verify($payload, "t=$t,v1=$sig", 'whsec_other', $t), 'f', 'another secret');
is(verify($payload . ' ', "t=$t,v1=$sig", $secret, $t), 'f', 'a changed payload');
is(verify($payload, "t=" . ($t + 1) . ",v1=$sig", $secret, $t), 'f', 'a changed timestamp');

# UTF-8: the bytes are signed, not the characters
my $utf8 = '{"id":"evt_2","data":{"object":{"metadata":{"name":"Zoë Müller 東京 🚀"}}}}';
my $bytes = $utf8;
utf8::encode($bytes);
my $usig = openssl_sig($secret, $t, $bytes);
is(verify($bytes, "t=$t,v1=$usig", $secret, $t), 't', 'a UTF-8 payload');

# several signatures: any v1 matching is enough; v0 is never used
my $wrong = 'a' x 64;
is(verify($payload, "t=$t,v1=$wrong,v1=$sig", $secret, $t), 't', 'the second v1 matches');
is(verify($payload, "t=$t,v1=$sig,v1=$wrong", $secret, $t), 't', 'the first v1 matches');
is(verify($payload, "t=$t,v0=$sig", $secret, $t), 'f', 'v0 only is not accepted');
is(verify($payload, "t=$t,v1=$wrong,v0=$sig", $secret, $t), 'f', 'a right v0 does not save a wrong v1');
is(verify($payload, "t=$t, v1=$sig", $secret, $t), 't', 'a space after the comma');
is(verify($payload, "t=$t,v1=" . uc($sig), $secret, $t), 't', 'hex in capitals');

# malformed headers are false, not errors
for my $h ('', 'garbage', "v1=$sig", "t=,v1=$sig", "t=abc,v1=$sig", "t=$t",
	"t=$t,v1=", "t=$t,v1=xyz", "t=$t,v1=" . substr($sig, 1), "t=$t,t=$t,v1=$sig",
	"t=-$t,v1=$sig", "t=$t,v1=${sig}00")
{
	is(verify($payload, $h, $secret, $t), 'f', "malformed header '$h' is false");
}
is(verify($payload, undef, $secret, $t), 'f', 'no header is false');

# bad arguments are errors
my ($ret, $out, $err) = $node->psql('postgres',
	"SELECT tiermeter.verify_stripe_signature('x', 't=1,v1=00', '')");
like($err, qr/tiermeter: secret must not be empty/, 'an empty secret is an error');
($ret, $out, $err) = $node->psql('postgres',
	"SELECT tiermeter.verify_stripe_signature('x', 't=1,v1=00', NULL)");
like($err, qr/tiermeter: secret must not be NULL/, 'a NULL secret is an error');
($ret, $out, $err) = $node->psql('postgres',
	"SELECT tiermeter.verify_stripe_signature('x', 't=1,v1=00', 's', -1)");
like($err, qr/tolerance_seconds must not be negative/, 'a negative tolerance is an error');

# the default "at" is now()
my $now = time();
my $nsig = openssl_sig($secret, $now, $payload);
is($node->safe_psql('postgres',
	"SELECT tiermeter.verify_stripe_signature(" . lit($payload) . ", 't=$now,v1=$nsig', '$secret')"),
	't', 'signed now, checked with the defaults');

$node->stop;
done_testing();
