package main

import (
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

// infoCall matches a log call at info level with a literal message:
// log.Info("msg", ...) and logline.Info(log, "msg", ...).
var infoCall = regexp.MustCompile(`\bInfo\((?:[\w.]+, )?"([^"\\]+)"\s*[,)]`)

// TestReadmeLogsTable: every line logged at info level with a fixed message
// (what an operator sees with the default level) is in README's Logs
// section, as its `msg` in backquotes, so its fields are documented there.
func TestReadmeLogsTable(t *testing.T) {
	t.Parallel()
	readme, err := os.ReadFile("../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	_, logs, ok := strings.Cut(string(readme), "\n## Logs\n")
	if !ok {
		t.Fatal("README has no Logs section")
	}
	logs, _, _ = strings.Cut(logs, "\n## ")
	for _, dir := range []string{"../../cmd", "../../relay", "../../queue", "../../dnsmx", "../../internal"} {
		err := filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
			if err != nil || d.IsDir() || !strings.HasSuffix(path, ".go") || strings.HasSuffix(path, "_test.go") {
				return err
			}
			src, err := os.ReadFile(path)
			if err != nil {
				return err
			}
			for _, m := range infoCall.FindAllStringSubmatch(string(src), -1) {
				if !strings.Contains(logs, "`"+m[1]+"`") {
					t.Errorf("%s: the info line %q is not in README's Logs section", path, m[1])
				}
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
	}
}
