package tlsrpt

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"time"
)

// TLS report counts survive a restart. A report covers a whole period (a
// day by default, RFC 8460 §4.1); a restart in the middle must not lose
// what was counted before it. The agent writes the counts to
// data_dir/tls-report-counts.json every SaveInterval, after each report
// run and when it stops, and reads them back when it is made. A kill loses at most
// SaveInterval of counts.

const (
	// CountsFile is the file in data_dir that keeps the counts.
	CountsFile = "tls-report-counts.json"
	// SaveInterval is how often the counts are written.
	SaveInterval = 5 * time.Minute
)

// savedTLSCounts is the file's content.
type savedTLSCounts struct {
	Start  time.Time `json:"start"` // when the period began
	Counts []Counts  `json:"counts"`
}

// SaveCounts writes the period's start and counts to path (replacing the
// file atomically).
func SaveCounts(path string, start time.Time, counts []Counts) error {
	saved := savedTLSCounts{Start: start, Counts: counts}
	data, err := json.Marshal(saved)
	if err != nil {
		return fmt.Errorf("tls reports: saving counts: %w", err)
	}
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, data, 0o600); err != nil {
		return fmt.Errorf("tls reports: saving counts: %w", err)
	}
	if err := os.Rename(tmp, path); err != nil {
		os.Remove(tmp)
		return fmt.Errorf("tls reports: saving counts: %w", err)
	}
	return nil
}

// LoadCounts returns the period's start and the counts a previous run
// saved to path; none (and no error) when there is no file.
func LoadCounts(path string) (time.Time, []Counts, error) {
	data, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return time.Time{}, nil, nil
	}
	var saved savedTLSCounts
	if err == nil {
		err = json.Unmarshal(data, &saved)
	}
	if err != nil {
		return time.Time{}, nil, err
	}
	return saved.Start, saved.Counts, nil
}

// Merge adds counts (those a previous run saved) to s's.
func (s *Stats) Merge(counts []Counts) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, c := range counts {
		t := s.entry(c.PolicyDomain, c.PolicyType, c.PolicyString)
		if t == nil {
			continue
		}
		t.success += c.Success
		t.failure += c.Failure
		if !c.Since.IsZero() && c.Since.Before(t.since) {
			t.since = c.Since
		}
		for _, mx := range c.MXHosts {
			t.mx[mx] = true
		}
		for _, f := range c.Failures {
			k := failKey{f.ResultType, f.ReceivingMX, f.ReceivingIP, f.SendingIP}
			if have := t.failures[k]; have != nil {
				have.Count += f.Count
			} else {
				f := f
				t.failures[k] = &f
			}
		}
	}
}
