package config

import (
	"errors"
	"fmt"
	"net"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

// FuzzParse feeds arbitrary files to Parse. The seed corpus in
// testdata/fuzz/FuzzParse holds config.example.toml and every bad config.
// Parse must never panic, and must return either a usable Config or an *Error
// that says what is wrong, and where: a key, or the line of a syntax error.
// A smarthost or listener address accepted splits into a host and a port
// number.
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
		// What delivery and the listeners split into host and port is
		// a host and a port number (a smarthost that did not split
		// was taken whole for the host, port 25).
		hostPort := func(what, hp string, low int) {
			host, port, err := net.SplitHostPort(hp)
			n, perr := strconv.Atoi(port)
			if err != nil || perr != nil || n < low || n > 65535 ||
				low > 0 && host == "" || strings.ContainsFunc(host, func(r rune) bool { return r <= ' ' || r == 0x7f }) {
				t.Fatalf("%s %q accepted", what, hp)
			}
		}
		for i, r := range cfg.Route {
			if len(r.Smarthosts) == 0 || len(r.Domains) == 0 {
				t.Fatalf("route[%d] accepted without smarthosts or domains: %+v", i, r)
			}
			for _, hp := range r.Smarthosts {
				hostPort(fmt.Sprintf("route[%d] smarthost", i), hp, 1)
			}
		}
		for i, l := range cfg.Listener {
			hostPort(fmt.Sprintf("listener[%d] address", i), l.Address, 0)
		}
		if cfg.Admin.Socket == "" || len(cfg.RetryDurations()) == 0 {
			t.Fatal("defaults missing")
		}
	})
}
