package main

import (
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"strings"
	"testing"
)

// TestArchitecturePackageTable: every package of the module (what `go list
// ./...` lists) has its row in ARCHITECTURE.md's package table, named in
// backquotes by its path (a sub-package may be named from its parent's
// name on: `dkimsign/dkimkey` in relay/dkimsign's row).
func TestArchitecturePackageTable(t *testing.T) {
	t.Parallel()
	arch, err := os.ReadFile("../../ARCHITECTURE.md")
	if err != nil {
		t.Fatal(err)
	}
	var table strings.Builder
	for _, line := range strings.Split(string(arch), "\n") {
		if strings.HasPrefix(line, "| `") {
			table.WriteString(line + "\n")
		}
	}
	named := func(rel string) bool {
		for p := rel; p != ""; {
			if strings.Contains(table.String(), "`"+p+"`") {
				return true
			}
			_, rest, ok := strings.Cut(p, "/")
			if !ok || !strings.Contains(rest, "/") {
				return false // a bare last element names nothing
			}
			p = rest
		}
		return false
	}
	root := "../.."
	pkgs := map[string]bool{}
	err = filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() {
			if n := d.Name(); p != root && (strings.HasPrefix(n, ".") || strings.HasPrefix(n, "_") || n == "testdata" || n == "third_party" || n == "vendor") {
				return filepath.SkipDir
			}
			if _, err := os.Stat(filepath.Join(p, "go.mod")); err == nil && p != root {
				return filepath.SkipDir // another module
			}
			return nil
		}
		if strings.HasSuffix(p, ".go") {
			rel, err := filepath.Rel(root, filepath.Dir(p))
			if err != nil {
				return err
			}
			pkgs[filepath.ToSlash(rel)] = true
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(pkgs) < 10 {
		t.Fatalf("found only %d packages: %v", len(pkgs), pkgs)
	}
	for rel := range pkgs {
		if rel == "." {
			continue
		}
		if !named(rel) {
			t.Errorf("package %s (%s) has no row in ARCHITECTURE.md's package table", rel, path.Base(rel))
		}
	}
}
