package config

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"strings"

	"github.com/BurntSushi/toml"
)

// Load reads and checks the configuration file at path. See Parse.
func Load(path string) (*Config, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, &Error{Path: path, Problems: []Problem{{Msg: err.Error()}}, cause: err}
	}
	return Parse(data, path)
}

// Parse decodes a configuration file's contents, applies defaults and checks
// every value. path names the file in problems, and relative paths inside the
// file (data_dir, certificate and key files, admin socket) are taken relative
// to its directory. Unknown keys are errors. On failure the error is an *Error
// holding every problem found, not just the first, and the Config is nil.
func Parse(data []byte, path string) (*Config, error) {
	cfg := defaults()
	cfg.Path = path
	ps := &problems{lines: newLineIndex(data)}

	d := decoder{ps: ps}
	if !d.decode(data, cfg) {
		return nil, &Error{Path: path, Problems: ps.sorted()}
	}
	d.unknownKeys()

	cfg.resolvePaths(filepath.Dir(path))
	cfg.finish()
	cfg.validate(ps)
	if len(ps.list) > 0 {
		return nil, &Error{Path: path, Problems: ps.sorted()}
	}
	return cfg, nil
}

// decoder fills a Config key by key, so that one value of the wrong type is
// one problem and the rest of the file is still checked. For every struct it
// decodes a shadow struct whose fields are all toml.Primitive (same tags), then
// decodes each defined field on its own.
type decoder struct {
	ps     *problems
	md     toml.MetaData
	failed []string // plain keys whose value could not be decoded
}

var (
	primitiveType = reflect.TypeFor[toml.Primitive]()
	textType      = reflect.TypeFor[interface{ UnmarshalText([]byte) error }]()
)

// decode reports false when the file is not TOML at all.
func (d *decoder) decode(data []byte, cfg *Config) bool {
	rv := reflect.ValueOf(cfg).Elem()
	shadow := reflect.New(shadowType(rv.Type()))
	md, err := toml.Decode(string(data), shadow.Interface())
	if err != nil {
		var pe toml.ParseError
		if errors.As(err, &pe) {
			// pe.Usage is a multi-line essay; one line per problem is the contract.
			d.ps.addAt("", pe.Position.Line, "TOML syntax: %s", pe.Message)
		} else {
			d.ps.addAt("", 0, "TOML: %v", err)
		}
		return false
	}
	d.md = md
	d.fields(shadow.Elem(), rv, "", "")
	return true
}

// shadowType is t with every TOML field replaced by a toml.Primitive.
func shadowType(t reflect.Type) reflect.Type {
	var fields []reflect.StructField
	for i := range t.NumField() {
		f := t.Field(i)
		name := tomlName(f)
		if name == "" {
			continue
		}
		fields = append(fields, reflect.StructField{
			Name: f.Name,
			Type: primitiveType,
			Tag:  reflect.StructTag(fmt.Sprintf("toml:%q", name)),
		})
	}
	return reflect.StructOf(fields)
}

// tomlName is the key of a struct field, or "" for fields that are not keys.
func tomlName(f reflect.StructField) string {
	if !f.IsExported() {
		return ""
	}
	name, _, _ := strings.Cut(f.Tag.Get("toml"), ",")
	if name == "-" || name == "" {
		return ""
	}
	return name
}

// fields decodes each defined field of shadow into dst (a struct of the type
// shadow was made from). key is the indexed path of dst, plain the same
// without indices.
func (d *decoder) fields(shadow, dst reflect.Value, key, plain string) {
	t := dst.Type()
	for i := range t.NumField() {
		name := tomlName(t.Field(i))
		if name == "" {
			continue
		}
		p := shadow.FieldByName(t.Field(i).Name)
		if p.IsZero() { // key absent: keep the default
			continue
		}
		d.value(p.Interface().(toml.Primitive), dst.Field(i), joinKey(key, name), joinKey(plain, name))
	}
}

// value decodes one primitive into dst, recursing into tables and arrays.
func (d *decoder) value(prim toml.Primitive, dst reflect.Value, key, plain string) {
	t := dst.Type()
	switch {
	case reflect.PointerTo(t).Implements(textType):
		// A leaf such as Duration.
	case t.Kind() == reflect.Struct:
		shadow := reflect.New(shadowType(t))
		if err := d.md.PrimitiveDecode(prim, shadow.Interface()); err != nil {
			d.fail(key, plain, "must be a table")
			return
		}
		d.fields(shadow.Elem(), dst, key, plain)
		return
	case t.Kind() == reflect.Slice:
		var elems []toml.Primitive
		if err := d.md.PrimitiveDecode(prim, &elems); err != nil {
			d.fail(key, plain, "must be %s", kindName(t))
			return
		}
		out := reflect.MakeSlice(t, len(elems), len(elems))
		for j, e := range elems {
			d.value(e, out.Index(j), fmt.Sprintf("%s[%d]", key, j), plain)
		}
		dst.Set(out)
		return
	}
	if err := d.md.PrimitiveDecode(prim, dst.Addr().Interface()); err != nil {
		var pe toml.ParseError
		switch {
		case errors.As(err, &pe): // from UnmarshalText: already worded for people
			d.fail(key, plain, "%s", pe.Message)
		case strings.Contains(err.Error(), "out of range"):
			d.fail(key, plain, "is out of range")
		default:
			d.fail(key, plain, "must be %s", kindName(t))
		}
	}
}

func (d *decoder) fail(key, plain, format string, args ...any) {
	d.failed = append(d.failed, plain)
	d.ps.add(key, format, args...)
}

// kindName says in words what a value of type t looks like in TOML.
func kindName(t reflect.Type) string {
	if reflect.PointerTo(t).Implements(textType) {
		return "a string"
	}
	switch t.Kind() {
	case reflect.String:
		return "a string"
	case reflect.Bool:
		return "true or false"
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64,
		reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64:
		return "an integer"
	case reflect.Float32, reflect.Float64:
		return "a number"
	case reflect.Struct:
		return "a table"
	case reflect.Slice:
		if t.Elem().Kind() == reflect.Struct && !reflect.PointerTo(t.Elem()).Implements(textType) {
			return "an array of tables"
		}
		return "an array of " + strings.TrimPrefix(strings.TrimPrefix(kindName(t.Elem()), "a "), "an ") + "s"
	}
	return "a " + t.Kind().String()
}

// unknownKeys reports every key in the file that names no setting: those the
// decoder never touched (toml.MetaData.Undecoded), and those that matched a
// setting only because the library compares names without case.
func (d *decoder) unknownKeys() {
	known := knownKeys(reflect.TypeFor[Config](), "", map[string]string{})
	seen := map[string]int{}
	var reported []string
	report := func(k toml.Key, msg string) {
		plain := strings.Join(k, ".")
		n := seen[plain]
		seen[plain]++
		for _, list := range [][]string{reported, d.failed} {
			for _, p := range list {
				if strings.HasPrefix(plain, p+".") {
					return // the key above is already reported
				}
			}
		}
		reported = append(reported, plain)
		key, line, ok := d.ps.lines.nth(plain, n)
		if !ok {
			key, line = plain, d.ps.lines.lineOf(plain)
		}
		d.ps.addAt(key, line, "%s", msg)
	}
	undecoded := map[string]bool{}
	for _, k := range d.md.Undecoded() {
		undecoded[strings.Join(k, ".")] = true
		report(k, "unknown key"+suggest(k, known))
	}
	for _, k := range d.md.Keys() {
		plain := strings.Join(k, ".")
		if _, ok := known[plain]; ok || undecoded[plain] {
			continue
		}
		report(k, "unknown key"+suggest(k, known)+"; keys are case-sensitive")
	}
}

// knownKeys adds every key path of type t under prefix to known, mapped to
// its last component.
func knownKeys(t reflect.Type, prefix string, known map[string]string) map[string]string {
	for i := range t.NumField() {
		f := t.Field(i)
		name := tomlName(f)
		if name == "" {
			continue
		}
		key := joinKey(prefix, name)
		known[key] = name
		ft := f.Type
		if ft.Kind() == reflect.Slice {
			ft = ft.Elem()
		}
		if ft.Kind() == reflect.Struct && !reflect.PointerTo(ft).Implements(textType) {
			knownKeys(ft, key, known)
		}
	}
	return known
}

// suggest names a known key close to k, if there is one.
func suggest(k toml.Key, known map[string]string) string {
	parent := strings.Join(k[:len(k)-1], ".")
	last := k[len(k)-1]
	best, bestDist := "", 3
	for path, name := range known {
		if parentKey(path) != parent {
			continue
		}
		dist := editDistance(strings.ToLower(last), name)
		if dist < bestDist || (dist == bestDist && name < best) {
			best, bestDist = name, dist
		}
	}
	if best == "" || best == last {
		return ""
	}
	return fmt.Sprintf(" (did you mean %q?)", best)
}

// editDistance is the Levenshtein distance between a and b, in bytes.
func editDistance(a, b string) int {
	prev := make([]int, len(b)+1)
	cur := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev, cur = cur, prev
	}
	return prev[len(b)]
}
