package main

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestConfigCommand_PositionalIsUsage: "mailhop check-config FILE" (the
// file without --config) is a usage error; it checked $MAILHOP_CONFIG (or
// /etc/mailhop/config.toml) instead and said that one was OK. serve the
// same: it would have run with another file.
func TestConfigCommand_PositionalIsUsage(t *testing.T) {
	good := writeConfig(t, "")
	bad := filepath.Join(t.TempDir(), "bad.toml")
	if err := os.WriteFile(bad, []byte("no_such_key = 1\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, env := range []string{good, filepath.Join(t.TempDir(), "missing.toml")} {
		t.Setenv("MAILHOP_CONFIG", env)
		for _, cmd := range []string{"check-config", "serve"} {
			if cmd == "serve" && env == good {
				continue // it would run
			}
			var out, errs bytes.Buffer
			code := run([]string{"mailhop", cmd, bad}, strings.NewReader(""), &out, &errs)
			if code != exitUsage || !strings.Contains(errs.String(), "--config") || strings.Contains(out.String(), "OK") {
				t.Errorf("%s %s with MAILHOP_CONFIG=%s: exit %d, stdout %q, stderr %q; want 2 and a hint to --config",
					cmd, bad, env, code, out.String(), errs.String())
			}
		}
	}
}
