package config

import (
	"errors"
	"path/filepath"
	"strings"
	"testing"
)

// FuzzParse feeds arbitrary files to Parse. The seed corpus in
// testdata/fuzz/FuzzParse holds config.example.toml and every bad config.
// Parse must never panic, and must return either a usable Config or an *Error
// that says what is wrong, and where: a key, or the line of a syntax error.
func FuzzParse(f *testing.F) {
	f.Add([]byte(minimal))
	// Relative paths in fuzzed files resolve into this empty directory.
	path := filepath.Join(f.TempDir(), "config.toml")
	f.Fuzz(func(t *testing.T, data []byte) {
		cfg, err := Parse(data, path)
		if err != nil {
			var ce *Error
			if !errors.As(err, &ce) || len(ce.Problems) == 0 {
				t.Fatalf("error %T without problems: %v", err, err)
			}
			for _, p := range ce.Problems {
				if p.Msg == "" || p.Line < 0 {
					t.Fatalf("bad problem %+v", p)
				}
				// The TOML parser gives no line for some errors at the
				// end of the file (an escape there).
				if p.Key == "" && p.Line == 0 && !strings.HasPrefix(p.Msg, "TOML") {
					t.Fatalf("problem that names neither a key nor a line: %+v", p)
				}
			}
			if cfg != nil {
				t.Fatal("Config returned with an error")
			}
			_ = err.Error()
			return
		}
		if len(cfg.Listener) == 0 {
			t.Fatal("accepted a file without listeners")
		}
		if len(cfg.Policy.Trusted) != len(cfg.Policy.TrustedNetworks) {
			t.Fatalf("Trusted %v does not match trusted_networks %q", cfg.Policy.Trusted, cfg.Policy.TrustedNetworks)
		}
		for i, r := range cfg.Route {
			if len(r.Smarthosts) == 0 || len(r.Domains) == 0 {
				t.Fatalf("route[%d] accepted without smarthosts or domains: %+v", i, r)
			}
		}
		if cfg.Admin.Socket == "" || len(cfg.RetryDurations()) == 0 {
			t.Fatal("defaults missing")
		}
	})
}
