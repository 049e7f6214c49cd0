package tlsrpt

import (
	"bytes"
	"os"
	"path/filepath"
	"reflect"
	"testing"
	"time"
)

// goldenStats counts sessions of three policies of two domains, with a
// failure reason that JSON has to escape.
func goldenStats() (*Stats, time.Time) {
	t0 := time.Date(2026, 3, 1, 0, 0, 0, 0, time.UTC)
	s := &Stats{Now: func() time.Time { return t0 }}
	pol := []string{"version: STSv1", "mode: enforce", "mx: *.a.test", "max_age: 86400"}
	s.AddSuccess("a.test", PolicySTS, pol, "mx1.a.test")
	s.AddSuccess("a.test", PolicySTS, pol, "mx2.a.test")
	s.AddFailure("a.test", PolicySTS, pol, "mx2.a.test", "192.0.2.1", "192.0.2.9", "certificate-expired", "x509: expired")
	s.AddFailure("a.test", PolicySTS, pol, "mx2.a.test", "192.0.2.1", "192.0.2.9", "certificate-expired", "x509: expired again")
	s.AddFailure("a.test", PolicyNone, nil, "mx3.a.test", "192.0.2.3", "", "starttls-not-supported", "no STARTTLS")
	s.AddSuccess("b.test", PolicyTLSA, []string{"3 1 1 abcd"}, "mx.b.test")
	s.AddFailure("b.test", PolicyTLSA, nil, "mx.b.test", "2001:db8::1", "2001:db8::9", "tlsa-invalid", "mismatch \"q\" <x>")
	return s, t0
}

// The reports' JSON is byte for byte what mailhop wrote before this
// package was split out of relay/outbound (testdata/report-*.json were
// written by that build from the same counts).
func TestBuild_SameBytesAsBefore(t *testing.T) {
	t.Parallel()
	s, t0 := goldenStats()
	info := ReportInfo{Organization: "relay.test", Contact: "postmaster@relay.test", ReportID: "rid-1", Start: t0, End: t0.Add(24 * time.Hour)}
	counts := s.Results(false)
	for _, d := range []string{"a.test", "b.test"} {
		got, err := Build(d, counts, info)
		if err != nil {
			t.Fatal(err)
		}
		want, err := os.ReadFile(filepath.Join("testdata", "report-"+d+".json"))
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, want) {
			t.Errorf("report for %s:\n%s\nwant:\n%s", d, got, want)
		}
	}
}

// The counts file is the one mailhop wrote before the split
// (testdata/counts.json, written by that build from the same counts), and
// such a file loads back into the same counts.
func TestCounts_FileAsBefore(t *testing.T) {
	t.Parallel()
	s, t0 := goldenStats()
	want, err := os.ReadFile(filepath.Join("testdata", "counts.json"))
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), CountsFile)
	if err := SaveCounts(path, t0, s.Results(false)); err != nil {
		t.Fatal(err)
	}
	if got, _ := os.ReadFile(path); !bytes.Equal(got, want) {
		t.Errorf("saved:\n%s\nwant:\n%s", got, want)
	}

	start, counts, err := LoadCounts(filepath.Join("testdata", "counts.json"))
	if err != nil || !start.Equal(t0) {
		t.Fatalf("LoadCounts: start %v, %v", start, err)
	}
	var loaded Stats
	loaded.Merge(counts)
	if got, want := loaded.Results(false), s.Results(false); !reflect.DeepEqual(got, want) {
		t.Errorf("loaded counts:\n%+v\nwant:\n%+v", got, want)
	}
	// A second run's file adds to what is counted, as a restart does.
	loaded.Merge(counts)
	for _, c := range loaded.Results(false) {
		for _, w := range s.Results(false) {
			if c.PolicyDomain == w.PolicyDomain && c.PolicyType == w.PolicyType && (c.Success != 2*w.Success || c.Failure != 2*w.Failure) {
				t.Errorf("merged twice: %+v", c)
			}
		}
	}

	if start, counts, err := LoadCounts(filepath.Join(t.TempDir(), "none.json")); err != nil || !start.IsZero() || counts != nil {
		t.Errorf("LoadCounts of no file: %v %v %v", start, counts, err)
	}
}
