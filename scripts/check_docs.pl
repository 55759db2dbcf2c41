#!/usr/bin/perl
# Runs every example of a Markdown document and compares its output with the
# document: each ```sql block is run with psql (in order, in one database, so
# later examples see earlier ones), and its output must equal the ```text
# block that follows it.  Expects PG* variables for a running cluster.
use strict;
use warnings;

my ($doc, $db) = @ARGV;
die "usage: check_docs.pl FILE DBNAME\n" unless $doc && $db;

open my $fh, '<', $doc or die "$doc: $!\n";
my @lines = <$fh>;
close $fh;

my (@examples, $block, $kind, $start);
for my $i (0 .. $#lines)
{
	my $l = $lines[$i];
	if (!defined $kind && $l =~ /^```(sql|text)\s*$/)
	{
		($kind, $block, $start) = ($1, '', $i + 1);
	}
	elsif (defined $kind && $l =~ /^```\s*$/)
	{
		if ($kind eq 'sql') { push @examples, { sql => $block, line => $start }; }
		elsif (@examples && !exists $examples[-1]{want}) { $examples[-1]{want} = $block; }
		undef $kind;
	}
	elsif (defined $kind) { $block .= $l; }
}

my ($pass, $fail) = (0, 0);
for my $ex (@examples)
{
	unless (exists $ex->{want})
	{
		print "not ok - $doc:$ex->{line}: a sql example without its ```text output\n";
		$fail++;
		next;
	}
	my $tmp = "/tmp/check_docs.$$.sql";
	open my $out, '>', $tmp or die "$tmp: $!\n";
	print $out "SET timezone = 'UTC';\n", $ex->{sql};
	close $out;
	my $got = `psql -X -q -d $db -f $tmp 2>&1`;
	unlink $tmp;
	$got =~ s/^psql:[^:]+:\d+: //mg;
	s/\s+$//mg for ($got, $ex->{want});
	if ($got eq $ex->{want}) { $pass++; }
	else
	{
		$fail++;
		print "not ok - $doc:$ex->{line}\n--- documented\n$ex->{want}\n--- got\n$got\n";
	}
}
print "docs examples ($doc): $pass passed, $fail failed\n";
exit($fail || !$pass ? 1 : 0);
