package outbound

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"
)

// TLS report counts survive a restart. A report covers a whole period (a
// day by default, RFC 8460 §4.1); a restart in the middle must not lose
// what was counted before it. The agent writes the counts to
// data_dir/tls-report-counts.json every tlsSaveInterval, after each report
// run and when it stops, and New reads them back. A kill loses at most
// tlsSaveInterval of counts.

const (
	tlsCountsFile   = "tls-report-counts.json"
	tlsSaveInterval = 5 * time.Minute
)

// savedTLSCounts is the file's content.
type savedTLSCounts struct {
	Start  time.Time   `json:"start"` // when the period began
	Counts []TLSCounts `json:"counts"`
}

// tlsCountsPath is the file, or "" when there is no data_dir (tests).
func (a *Agent) tlsCountsPath() string {
	if d := a.config().DataDir; d != "" {
		return filepath.Join(d, tlsCountsFile)
	}
	return ""
}

// saveTLSCounts writes the period's start and counts (replacing the file
// atomically).
func (a *Agent) saveTLSCounts() error {
	path := a.tlsCountsPath()
	if path == "" {
		return nil
	}
	a.tlsrpt.mu.Lock()
	saved := savedTLSCounts{Start: a.tlsrpt.start, Counts: a.TLSResults(false)}
	a.tlsrpt.mu.Unlock()
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

// loadTLSCounts adds the counts a previous run saved to this one's, and
// takes over its period's start. A file that cannot be read is logged and
// left for the next save to replace.
func (a *Agent) loadTLSCounts() {
	path := a.tlsCountsPath()
	if path == "" {
		return
	}
	data, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return
	}
	var saved savedTLSCounts
	if err == nil {
		err = json.Unmarshal(data, &saved)
	}
	if err != nil {
		a.log.Warn("tls reports: the counts of the previous run are lost", "file", path, "err", err)
		return
	}
	if !saved.Start.IsZero() && saved.Start.Before(a.tlsrpt.start) {
		a.tlsrpt.start = saved.Start
	}
	s := &a.tlsStats
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, c := range saved.Counts {
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
