package config

import (
	"fmt"
	"strings"
)

// lineIndex maps keys to the lines that define them. The TOML library does not
// expose key positions, so this is a best-effort scan of the raw text: it
// understands [table] and [[array]] headers, "key = value" lines, dotted keys
// and multi-line strings and arrays, which covers every file written by hand in
// the style of config.example.toml. Anything it cannot place gets line 0.
type lineIndex struct {
	entries   []lineEntry
	byIndexed map[string]int
}

type lineEntry struct {
	plain   string // key path without array indices: "listener.mode"
	indexed string // the same with indices: "listener[1].mode"
	line    int
}

func newLineIndex(data []byte) *lineIndex {
	li := &lineIndex{byIndexed: map[string]int{}}
	var (
		plainPrefix, indexedPrefix string
		counts                     = map[string]int{}
		inString                   string // closing delimiter of an open multi-line string
		depth                      int    // open brackets of a multi-line array
	)
	for i, raw := range strings.Split(string(data), "\n") {
		line := strings.TrimSpace(raw)
		switch {
		case inString != "":
			if strings.Count(line, inString)%2 == 1 {
				inString = ""
			}
			continue
		case depth > 0:
			depth += bracketBalance(line)
			continue
		case line == "" || line[0] == '#':
			continue
		case strings.HasPrefix(line, "[["):
			end := strings.Index(line, "]]")
			if end < 0 {
				continue
			}
			name := normKey(line[2:end])
			n := counts[name]
			counts[name]++
			plainPrefix, indexedPrefix = name, fmt.Sprintf("%s[%d]", name, n)
			li.add(plainPrefix, indexedPrefix, i+1)
			continue
		case line[0] == '[':
			end := strings.IndexByte(line, ']')
			if end < 0 {
				continue
			}
			name := normKey(line[1:end])
			plainPrefix, indexedPrefix = name, name
			li.add(plainPrefix, indexedPrefix, i+1)
			continue
		}
		eq := strings.IndexByte(line, '=')
		if eq <= 0 {
			continue
		}
		key := normKey(line[:eq])
		li.add(joinKey(plainPrefix, key), joinKey(indexedPrefix, key), i+1)
		value := line[eq+1:]
		for _, delim := range []string{`"""`, `'''`} {
			if strings.Count(value, delim)%2 == 1 {
				inString = delim
			}
		}
		if inString == "" {
			depth = max(bracketBalance(value), 0)
		}
	}
	return li
}

func (li *lineIndex) add(plain, indexed string, line int) {
	li.entries = append(li.entries, lineEntry{plain, indexed, line})
	if _, ok := li.byIndexed[indexed]; !ok {
		li.byIndexed[indexed] = line
	}
}

// lineOf returns the line of key ("route[0].smarthost[1]"), or of the nearest
// enclosing key found, or 0.
func (li *lineIndex) lineOf(key string) int {
	if li == nil {
		return 0
	}
	for key != "" {
		if l, ok := li.byIndexed[key]; ok {
			return l
		}
		key = parentKey(key)
	}
	return 0
}

// nth returns the indexed name and line of the n-th (0-based) key line whose
// path without indices is plain.
func (li *lineIndex) nth(plain string, n int) (string, int, bool) {
	if li == nil {
		return "", 0, false
	}
	for _, e := range li.entries {
		if e.plain == plain {
			if n == 0 {
				return e.indexed, e.line, true
			}
			n--
		}
	}
	return "", 0, false
}

// parentKey strips the last index or component: "a[1].b[2]" → "a[1].b" → "a[1]" → "a" → "".
func parentKey(key string) string {
	if strings.HasSuffix(key, "]") {
		if i := strings.LastIndexByte(key, '['); i >= 0 {
			return key[:i]
		}
	}
	if i := strings.LastIndexByte(key, '.'); i >= 0 {
		return key[:i]
	}
	return ""
}

func joinKey(prefix, key string) string {
	if prefix == "" {
		return key
	}
	return prefix + "." + key
}

// normKey turns ` a . "b" ` into "a.b".
func normKey(s string) string {
	parts := strings.Split(s, ".")
	for i, p := range parts {
		parts[i] = strings.Trim(strings.TrimSpace(p), `"'`)
	}
	return strings.Join(parts, ".")
}

// bracketBalance counts '[' minus ']' outside quoted strings and comments.
func bracketBalance(s string) int {
	n := 0
	var quote byte
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case quote != 0:
			if c == '\\' && quote == '"' {
				i++
			} else if c == quote {
				quote = 0
			}
		case c == '"' || c == '\'':
			quote = c
		case c == '#':
			return n
		case c == '[':
			n++
		case c == ']':
			n--
		}
	}
	return n
}
