package config

import (
	"os"
	"reflect"
	"regexp"
	"slices"
	"strings"
	"testing"
)

// structKeys lists every key the loader accepts, as "section.key" (or "key"
// at the top level), from the toml tags of t.
func structKeys(t reflect.Type, prefix string) []string {
	var keys []string
	for i := range t.NumField() {
		f := t.Field(i)
		name := tomlName(f)
		if name == "" {
			continue
		}
		ft := f.Type
		if ft.Kind() == reflect.Slice {
			ft = ft.Elem()
		}
		if ft.Kind() == reflect.Struct && !reflect.PointerTo(ft).Implements(textType) {
			keys = append(keys, structKeys(ft, prefix+name+".")...)
			continue
		}
		keys = append(keys, prefix+name)
	}
	return keys
}

var (
	exampleSection = regexp.MustCompile(`^(?:#\s*)?\[\[?([a-z_]+)\]\]?\s*$`)
	exampleKey     = regexp.MustCompile(`^(?:#\s*)?([a-z_]+)\s*=`)
)

// exampleKeys lists the keys config.example.toml sets or shows commented
// out (such as the [[route]] example), as "section.key".
func exampleKeys(text string) []string {
	var keys []string
	section := ""
	for line := range strings.Lines(text) {
		line = strings.TrimSpace(line)
		if m := exampleSection.FindStringSubmatch(line); m != nil {
			section = m[1] + "."
			continue
		}
		if m := exampleKey.FindStringSubmatch(line); m != nil {
			keys = append(keys, section+m[1])
		}
	}
	slices.Sort(keys)
	return slices.Compact(keys)
}

// TestExampleDocumentsEveryKey holds config.example.toml and the README's
// configuration table to the keys the loader accepts: a key added to the
// code without its documentation, or documented under a name or section the
// loader refuses, fails here.
func TestExampleDocumentsEveryKey(t *testing.T) {
	t.Parallel()
	want := structKeys(reflect.TypeFor[Config](), "")
	slices.Sort(want)

	example, err := os.ReadFile("../../config.example.toml")
	if err != nil {
		t.Fatal(err)
	}
	sameKeys(t, want, exampleKeys(string(example)), "config.example.toml", "document")

	readme, err := os.ReadFile("../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	_, table, ok := strings.Cut(string(readme), "\n## Configuration\n")
	if !ok {
		t.Fatal("README.md has no Configuration section")
	}
	table, _, _ = strings.Cut(table, "\n## ")
	// The first column of each row names the keys, `[section] key` then
	// `key`s of that section; "`a` … `b`" is a range of keys of the code's
	// order.
	var documented []string
	ranged := map[string]bool{}
	for line := range strings.Lines(table) {
		cells := strings.Split(line, "|")
		if len(cells) < 3 || !strings.Contains(cells[1], "`") {
			continue
		}
		section := ""
		names := regexp.MustCompile("`([^`]*)`").FindAllStringSubmatch(cells[1], -1)
		for i, m := range names {
			name := m[1]
			if s, k, ok := strings.Cut(name, " "); ok && strings.HasPrefix(s, "[") {
				section = strings.Trim(s, "[]") + "."
				name = k
			}
			for _, k := range strings.Split(name, "/") {
				documented = append(documented, section+k)
			}
			if i > 0 && strings.Contains(cells[1], "`"+names[i-1][1]+"` … `"+m[1]+"`") {
				ranged[section+strings.TrimPrefix(names[i-1][1], "["+strings.TrimSuffix(section, ".")+"] ")] = true
				ranged[section+name] = true
			}
		}
	}
	// Fill in the ranges with the keys between their ends, in struct order.
	inRange := false
	for _, k := range structKeys(reflect.TypeFor[Config](), "") {
		if ranged[k] {
			inRange = !inRange
			continue
		}
		if inRange {
			documented = append(documented, k)
		}
	}
	sameKeys(t, want, documented, "README.md's configuration table", "name")
}

// sameKeys fails for each key of want that doc does not verb (name or
// document), and for each it does that the loader refuses.
func sameKeys(t *testing.T, want, got []string, doc, verb string) {
	t.Helper()
	for _, k := range want {
		if !slices.Contains(got, k) {
			t.Errorf("%s does not %s %s", doc, verb, k)
		}
	}
	for _, k := range got {
		if !slices.Contains(want, k) {
			t.Errorf("%s %ss %s, which the loader refuses", doc, verb, k)
		}
	}
}
