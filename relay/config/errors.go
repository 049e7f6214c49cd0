package config

import (
	"cmp"
	"fmt"
	"slices"
	"strings"
)

// Problem is one thing wrong with a configuration file.
type Problem struct {
	Key  string // the key at fault, like "listener[0].mode"; empty for syntax errors
	Line int    // 1-based line in the file; 0 when unknown
	Msg  string // what is wrong, for a person to read
}

// Error is every problem found in one configuration file. Load and Parse
// return it (as error) whenever the file cannot be used.
type Error struct {
	Path     string // the file, as given to Load or Parse
	Problems []Problem

	cause error // the underlying error when the file could not be read
}

// Error prints one problem per line: "file:line: key: message".
func (e *Error) Error() string {
	var b strings.Builder
	for i, p := range e.Problems {
		if i > 0 {
			b.WriteByte('\n')
		}
		b.WriteString(e.format(p))
	}
	return b.String()
}

// Unwrap returns the I/O error when the file could not be read at all, so that
// errors.Is(err, fs.ErrNotExist) works.
func (e *Error) Unwrap() error { return e.cause }

func (e *Error) format(p Problem) string {
	var b strings.Builder
	path := e.Path
	if path == "" {
		path = "config"
	}
	b.WriteString(path)
	if p.Line > 0 {
		fmt.Fprintf(&b, ":%d", p.Line)
	}
	b.WriteString(": ")
	if p.Key != "" {
		b.WriteString(p.Key)
		b.WriteString(": ")
	}
	b.WriteString(p.Msg)
	return b.String()
}

// problems collects Problems while a file is checked, looking up lines as it
// goes.
type problems struct {
	list  []Problem
	lines *lineIndex
}

// add records a problem for key, unless key already has one: a value that
// could not be decoded is not also reported by the checks that follow.
func (ps *problems) add(key, format string, args ...any) {
	for _, p := range ps.list {
		if p.Key == key && key != "" {
			return
		}
	}
	ps.addAt(key, ps.lines.lineOf(key), format, args...)
}

// addAt records a problem whose line is already known.
func (ps *problems) addAt(key string, line int, format string, args ...any) {
	ps.list = append(ps.list, Problem{Key: key, Line: line, Msg: fmt.Sprintf(format, args...)})
}

// sorted returns the problems in file order; those without a line come last,
// in the order they were found.
func (ps *problems) sorted() []Problem {
	out := slices.Clone(ps.list)
	slices.SortStableFunc(out, func(a, b Problem) int {
		switch {
		case a.Line == b.Line:
			return 0
		case a.Line == 0:
			return 1
		case b.Line == 0:
			return -1
		}
		return cmp.Compare(a.Line, b.Line)
	})
	return out
}
