"""Per-language rendering of a problem: the signature shown in the prompt and the hidden test driver.

Each language knows how to spell the five types (problems.TYPES), a literal of each, a call, and a driver
that prints one line per test: `<marker> <i> <value>` where value is the result as JSON, or `! <error>`
when the call raised (bash: `<marker> <i> <status> <base64 of stdout>`, see `Bash`). The marker holds a
random nonce made per run, so an answer cannot print a fake result. The host compares (runner.py), so
the drivers only call and print.

The solution and the driver go into the files `program()` returns; the runner compiles and runs them.
"""

from __future__ import annotations

import json
import re

from cardforge.eval.coding.problems import Problem


def camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(w.capitalize() for w in rest)


def _json_str(s: str) -> str:
    return json.dumps(s)  # test strings are printable ASCII without quotes/backslashes: valid in C-like languages


class Language:
    name = ""
    fences: tuple[str, ...] = ()  # code fence tags that mean this language
    camel_case = False
    notes = ""  # conventions the prompt must state (how lists are passed, where the function lives)

    def fn(self, p: Problem) -> str:
        return camel(p.function) if self.camel_case else p.function

    def signature(self, p: Problem) -> str:
        raise NotImplementedError

    def literal(self, value, t: str) -> str:
        raise NotImplementedError

    def call(self, p: Problem, args: tuple) -> str:
        return f"{self.fn(p)}({', '.join(self.literal(a, pr.type) for a, pr in zip(args, p.params))})"

    def program(self, p: Problem, solution: str, marker: str) -> dict[str, str]:
        """Files for the sandbox's workspace: the solution and the driver."""
        raise NotImplementedError

    def prepare(self, solution: str) -> str:
        """Small, safe normalisations of an answer (e.g. rename the answer's own `main`)."""
        return solution


class Python(Language):
    name, fences = "python", ("python", "py", "python3")
    TYPES = {"int": "int", "str": "str", "bool": "bool", "list[int]": "list[int]", "list[str]": "list[str]"}

    def signature(self, p):
        args = ", ".join(f"{a.name}: {self.TYPES[a.type]}" for a in p.params)
        return f"def {self.fn(p)}({args}) -> {self.TYPES[p.returns]}:"

    def literal(self, value, t):
        return repr(value)

    def program(self, p, solution, marker):
        lines = [solution, "", "import json as _cf_json", "", "def _cf_run(i, f):", "    try:",
                 f"        print({marker!r}, i, _cf_json.dumps(f()), flush=True)",
                 "    except BaseException as e:  # noqa: BLE001 - report every failure of the answer",
                 f"        print({marker!r}, i, '!', type(e).__name__ + ': ' + str(e)[:200], flush=True)", ""]
        lines += [f"_cf_run({i}, lambda: {self.call(p, args)})" for i, (args, _) in enumerate(p.tests)]
        return {"main.py": "\n".join(lines) + "\n"}


class JavaScript(Language):
    name, fences, camel_case = "javascript", ("javascript", "js", "node", "jsx"), True
    TYPES = {"int": "number", "str": "string", "bool": "boolean", "list[int]": "number[]", "list[str]": "string[]"}
    notes = "Plain Node.js (CommonJS): a function declaration, no `export`."

    def signature(self, p):
        doc = [f" * @param {{{self.TYPES[a.type]}}} {a.name}" for a in p.params]
        doc.append(f" * @returns {{{self.TYPES[p.returns]}}}")
        return "/**\n" + "\n".join(doc) + "\n */\nfunction " + f"{self.fn(p)}({', '.join(a.name for a in p.params)})"

    def literal(self, value, t):
        return json.dumps(value)

    def prepare(self, solution):
        return re.sub(r"^export\s+(default\s+)?", "", solution, flags=re.M)

    def _driver(self, p, marker, prelude="", typed=False):
        head = "function __cfRun(i: number, f: () => unknown): void {" if typed else "function __cfRun(i, f) {"
        lines = [prelude, head, "  let line = \"\";",
                 f"  try {{ line = {json.dumps(marker)} + ' ' + i + ' ' + JSON.stringify(f()); }}",
                 f"  catch (e) {{ line = {json.dumps(marker)} + ' ' + i + ' ! ' + String(e).slice(0, 200); }}",
                 "  console.log(line);", "}"]
        lines += [f"__cfRun({i}, () => {self.call(p, args)});" for i, (args, _) in enumerate(p.tests)]
        return "\n".join(lines) + "\n"

    def program(self, p, solution, marker):
        return {"main.js": solution + "\n\n" + self._driver(p, marker)}


class TypeScript(JavaScript):
    name, fences = "typescript", ("typescript", "ts")
    notes = "Compiled with tsc --strict (ES2020 library, no Node typings: no `require`/`process`), no `export`."

    def signature(self, p):
        args = ", ".join(f"{a.name}: {self.TYPES[a.type]}" for a in p.params)
        return f"function {self.fn(p)}({args}): {self.TYPES[p.returns]}"

    def program(self, p, solution, marker):
        # no lib.dom (slow to load, and not what a Node program sees): declare the one global the driver uses
        has_console = re.search(r"\bdeclare\s+(const|var|let)\s+console\b", solution)
        prelude = "" if has_console else "declare const console: { log(...args: unknown[]): void };"
        return {"main.ts": solution + "\n\n" + self._driver(p, marker, prelude, typed=True)}


class Java(Language):
    name, fences, camel_case = "java", ("java",), True
    TYPES = {"int": "int", "str": "String", "bool": "boolean", "list[int]": "int[]", "list[str]": "String[]"}
    notes = "Put it in `class Solution` as a `public static` method; no `main`."

    def signature(self, p):
        args = ", ".join(f"{self.TYPES[a.type]} {a.name}" for a in p.params)
        return f"class Solution {{\n    public static {self.TYPES[p.returns]} {self.fn(p)}({args}) {{ ... }}\n}}"

    def literal(self, value, t):
        if t == "list[int]":
            return "new int[]{" + ", ".join(map(str, value)) + "}"
        if t == "list[str]":
            return "new String[]{" + ", ".join(map(_json_str, value)) + "}"
        return _json_str(value) if t == "str" else json.dumps(value)

    def call(self, p, args):
        return "Solution." + super().call(p, args)

    DRIVER = """
public class Main {
    static String q(String s) {
        if (s == null) return "null";
        StringBuilder b = new StringBuilder("\\"");
        for (char c : s.toCharArray()) {
            if (c == '"' || c == '\\\\') b.append('\\\\').append(c);
            else if (c < 32 || c > 126) b.append(String.format("\\\\u%04x", (int) c));
            else b.append(c);
        }
        return b.append('"').toString();
    }
    static String show(int v) { return Integer.toString(v); }
    static String show(boolean v) { return v ? "true" : "false"; }
    static String show(String v) { return q(v); }
    static String show(int[] v) {
        if (v == null) return "null";
        StringBuilder b = new StringBuilder("[");
        for (int i = 0; i < v.length; i++) b.append(i > 0 ? "," : "").append(v[i]);
        return b.append("]").toString();
    }
    static String show(String[] v) {
        if (v == null) return "null";
        StringBuilder b = new StringBuilder("[");
        for (int i = 0; i < v.length; i++) b.append(i > 0 ? "," : "").append(q(v[i]));
        return b.append("]").toString();
    }
    public static void main(String[] args) {
/*CF_BODY*/
    }
}
"""

    def program(self, p, solution, marker):
        body = []
        for i, (args, _) in enumerate(p.tests):
            body.append(f'        try {{ System.out.println("{marker} {i} " + show({self.call(p, args)})); }}\n'
                        f'        catch (Throwable e) {{ System.out.println("{marker} {i} ! " + e); }}')
        return {"Solution.java": solution, "Main.java": self.DRIVER.replace("/*CF_BODY*/", "\n".join(body))}


_MAIN_C = re.compile(r"\bint\s+main\s*\(")


class Cpp(Language):
    name, fences = "cpp", ("cpp", "c++", "cc", "cxx", "hpp")
    TYPES = {"int": "int", "str": "std::string", "bool": "bool", "list[int]": "std::vector<int>",
             "list[str]": "std::vector<std::string>"}
    PARAM = {"int": "int", "str": "const std::string&", "bool": "bool", "list[int]": "const std::vector<int>&",
             "list[str]": "const std::vector<std::string>&"}
    notes = "C++17; the function only, no `main`."
    HEADERS = "#include <string>\n#include <vector>\n#include <iostream>\n#include <algorithm>\n"

    def signature(self, p):
        args = ", ".join(f"{self.PARAM[a.type]} {a.name}" for a in p.params)
        return f"{self.TYPES[p.returns]} {self.fn(p)}({args})"

    def literal(self, value, t):
        if t == "list[int]":
            return "std::vector<int>{" + ", ".join(map(str, value)) + "}"
        if t == "list[str]":
            return "std::vector<std::string>{" + ", ".join(map(_json_str, value)) + "}"
        return f"std::string({_json_str(value)})" if t == "str" else json.dumps(value)

    def prepare(self, solution):
        return _MAIN_C.sub("int cf_answer_main(", solution)

    DRIVER = r"""
static std::string cf_q(const std::string& s) {
    std::string o = "\"";
    for (unsigned char c : s) {
        if (c == '"' || c == '\\') { o += '\\'; o += (char)c; }
        else if (c < 32 || c > 126) { char b[8]; snprintf(b, sizeof b, "\\u%04x", c); o += b; }
        else o += (char)c;
    }
    return o + "\"";
}
static std::string cf_show(int v) { return std::to_string(v); }
static std::string cf_show(bool v) { return v ? "true" : "false"; }
static std::string cf_show(const std::string& v) { return cf_q(v); }
static std::string cf_show(const std::vector<int>& v) {
    std::string o = "[";
    for (size_t i = 0; i < v.size(); i++) o += (i ? "," : "") + std::to_string(v[i]);
    return o + "]";
}
static std::string cf_show(const std::vector<std::string>& v) {
    std::string o = "[";
    for (size_t i = 0; i < v.size(); i++) o += (i ? "," : "") + cf_q(v[i]);
    return o + "]";
}
int main() {
/*CF_BODY*/
    return 0;
}
"""

    def program(self, p, solution, marker):
        body = []
        for i, (args, _) in enumerate(p.tests):
            out = f'std::cout << "{marker} {i} '
            body.append(f'    try {{ {out}" << cf_show({self.call(p, args)}) << std::endl; }}\n'
                        f'    catch (const std::exception& e) {{ {out}! " << e.what() << std::endl; }}\n'
                        f'    catch (...) {{ {out}! exception" << std::endl; }}')
        driver = self.DRIVER.replace("/*CF_BODY*/", "\n".join(body))
        return {"main.cpp": self.HEADERS + "#include <cstdio>\n" + solution + "\n" + driver}


class C(Language):
    name, fences = "c", ("c", "h")
    notes = ("C11. A list parameter is a pointer plus its length (`name_len`); a list result is returned as a "
             "malloc'd array with its length stored in `*out_len`; a string result is a NUL-terminated string "
             "(malloc'd or static). The function only, no `main`.")
    PARAM = {"int": "int {n}", "str": "const char *{n}", "bool": "bool {n}", "list[int]": "const int *{n}, int {n}_len",
             "list[str]": "const char **{n}, int {n}_len"}
    RET = {"int": "int", "str": "char *", "bool": "bool", "list[int]": "int *", "list[str]": "char **"}
    HEADERS = "#include <stdbool.h>\n#include <stdio.h>\n#include <stdlib.h>\n#include <string.h>\n#include <ctype.h>\n"

    def _params(self, p):
        out = [self.PARAM[a.type].format(n=a.name) for a in p.params]
        return out + (["int *out_len"] if p.returns.startswith("list") else [])

    def signature(self, p):
        ret = self.RET[p.returns]
        return f"{ret}{'' if ret.endswith('*') else ' '}{self.fn(p)}({', '.join(self._params(p))})"

    def literal(self, value, t):
        if t == "list[int]":
            return f"(const int[]){{{', '.join(map(str, value))}}}, {len(value)}" if value else "NULL, 0"
        if t == "list[str]":
            return (f"(const char *[]){{{', '.join(map(_json_str, value))}}}, {len(value)}" if value else "NULL, 0")
        return _json_str(value) if t == "str" else json.dumps(value)

    def prepare(self, solution):
        return _MAIN_C.sub("int cf_answer_main(", solution)

    DRIVER = r"""
static void cf_q(const char *s) {
    if (!s) { fputs("null", stdout); return; }
    putchar('"');
    for (const unsigned char *c = (const unsigned char *)s; *c; c++) {
        if (*c == '"' || *c == '\\') printf("\\%c", *c);
        else if (*c < 32 || *c > 126) printf("\\u%04x", *c);
        else putchar(*c);
    }
    putchar('"');
}
static void cf_show_int(int v) { printf("%d", v); }
static void cf_show_bool(bool v) { fputs(v ? "true" : "false", stdout); }
static void cf_show_str(const char *v) { cf_q(v); }
static void cf_show_ints(const int *v, int n) {
    if (!v && n) { fputs("null", stdout); return; }
    putchar('[');
    for (int i = 0; i < n; i++) printf(i ? ",%d" : "%d", v[i]);
    putchar(']');
}
static void cf_show_strs(char **v, int n) {
    if (!v && n) { fputs("null", stdout); return; }
    putchar('[');
    for (int i = 0; i < n; i++) { if (i) putchar(','); cf_q(v[i]); }
    putchar(']');
}
int main(void) {
/*CF_BODY*/
    return 0;
}
"""
    SHOW = {"int": "cf_show_int", "bool": "cf_show_bool", "str": "cf_show_str", "list[int]": "cf_show_ints",
            "list[str]": "cf_show_strs"}

    def program(self, p, solution, marker):
        body = []
        for i, (args, _) in enumerate(p.tests):
            lit = ", ".join(self.literal(a, pr.type) for a, pr in zip(args, p.params))
            show = self.SHOW[p.returns]
            if p.returns.startswith("list"):
                call = (f"{{ int n = -1; {self.RET[p.returns]}r = {self.fn(p)}({lit}{', ' if lit else ''}&n); "
                        f"if (n < 0) {{ printf(\"! out_len was not set\"); }} else {show}(r, n); }}")
            else:
                call = f"{show}({self.fn(p)}({lit}));"
            # flush per line: a crash in a later test must not lose the results printed before it
            body.append(f'    printf("{marker} {i} "); fflush(stdout); {call} putchar(\'\\n\'); fflush(stdout);')
        return {"main.c": self.HEADERS + solution + "\n" + self.DRIVER.replace("/*CF_BODY*/", "\n".join(body))}


class Rust(Language):
    name, fences = "rust", ("rust", "rs")
    notes = "Rust 2021, std only; the function only, no `main`."
    PARAM = {"int": "i64", "str": "&str", "bool": "bool", "list[int]": "&[i64]", "list[str]": "&[String]"}
    RET = {"int": "i64", "str": "String", "bool": "bool", "list[int]": "Vec<i64>", "list[str]": "Vec<String>"}

    def signature(self, p):
        args = ", ".join(f"{a.name}: {self.PARAM[a.type]}" for a in p.params)
        return f"fn {self.fn(p)}({args}) -> {self.RET[p.returns]}"

    def literal(self, value, t):
        if t == "list[int]":
            return "&[" + ", ".join(map(str, value)) + "]"
        if t == "list[str]":
            return "&[" + ", ".join(f"String::from({_json_str(v)})" for v in value) + "]"
        return _json_str(value) if t == "str" else json.dumps(value)

    def prepare(self, solution):
        return re.sub(r"\bfn\s+main\s*\(", "fn cf_answer_main(", solution)

    def program(self, p, solution, marker):
        # Debug formatting of i64 / bool / String / Vec<..> is JSON for our value set
        lines = ["#![allow(dead_code, unused)]", solution, "", "fn main() {",
                 "    std::panic::set_hook(Box::new(|_| {}));  // a panic is reported per test below"]
        for i, (args, _) in enumerate(p.tests):
            lines.append(f"    match std::panic::catch_unwind(|| {self.call(p, args)}) {{\n"
                         f"        Ok(v) => println!(\"{marker} {i} {{:?}}\", v),\n"
                         f"        Err(e) => println!(\"{marker} {i} ! panic: {{}}\", e.downcast_ref::<&str>()"
                         f".map(|s| s.to_string()).or_else(|| e.downcast_ref::<String>().cloned())"
                         f".unwrap_or_default()),\n    }}")
        return {"main.rs": "\n".join(lines) + "\n}\n"}


class Go(Language):
    name, fences, camel_case = "go", ("go", "golang"), True
    notes = "Go, standard library only, `package main`; the function only, no `func main`."
    TYPES = {"int": "int", "str": "string", "bool": "bool", "list[int]": "[]int", "list[str]": "[]string"}

    def signature(self, p):
        args = ", ".join(f"{a.name} {self.TYPES[a.type]}" for a in p.params)
        return f"func {self.fn(p)}({args}) {self.TYPES[p.returns]}"

    def literal(self, value, t):
        if t == "list[int]":
            return "[]int{" + ", ".join(map(str, value)) + "}"
        if t == "list[str]":
            return "[]string{" + ", ".join(map(_json_str, value)) + "}"
        return _json_str(value) if t == "str" else json.dumps(value)

    def prepare(self, solution):
        solution = re.sub(r"\bfunc\s+main\s*\(\s*\)", "func cfAnswerMain()", solution)
        if re.search(r"^\s*package\s+\w+", solution, re.M):
            return re.sub(r"^(\s*)package\s+\w+", r"\1package main", solution, count=1, flags=re.M)
        return "package main\n\n" + solution

    DRIVER = """package main

import (
	"encoding/json"
	"fmt"
)

func cfShow(v interface{}) string {
	switch x := v.(type) {
	case []int:
		if x == nil {
			v = []int{}
		}
	case []string:
		if x == nil {
			v = []string{}
		}
	}
	b, err := json.Marshal(v)
	if err != nil {
		return "! " + err.Error()
	}
	return string(b)
}

func cfRun(i int, f func() interface{}) {
	defer func() {
		if r := recover(); r != nil {
			fmt.Printf("%s %d ! panic: %v\\n", i, r)
		}
	}()
	fmt.Printf("%s %d %s\\n", i, cfShow(f()))
}

func main() {
"""

    def program(self, p, solution, marker):
        body = [f"\tcfRun({i}, func() interface{{}} {{ return {self.call(p, args)} }})"
                for i, (args, _) in enumerate(p.tests)]
        driver = self.DRIVER.replace("%s %d", f"{marker} %d") + "\n".join(body) + "\n}\n"
        return {"solution.go": solution, "main.go": driver}


class Ruby(Language):
    name, fences = "ruby", ("ruby", "rb")
    TYPES = {"int": "Integer", "str": "String", "bool": "Boolean", "list[int]": "Array<Integer>",
             "list[str]": "Array<String>"}

    def signature(self, p):
        doc = [f"# @param {a.name} [{self.TYPES[a.type]}]" for a in p.params]
        doc.append(f"# @return [{self.TYPES[p.returns]}]")
        return "\n".join(doc) + f"\ndef {self.fn(p)}({', '.join(a.name for a in p.params)})"

    def literal(self, value, t):
        return json.dumps(value)  # JSON literals of our value set are Ruby literals

    def program(self, p, solution, marker):
        lines = [solution, "", "require 'json'", "$stdout.sync = true", "def __cf_run(i)", "  v = yield",
                 f"  puts \"{marker} #{{i}} \" + JSON.generate(v)", "rescue Exception => e",
                 f"  puts \"{marker} #{{i}} ! #{{e.class}}: #{{e.message[0, 200]}}\"", "end"]
        lines += [f"__cf_run({i}) {{ {self.call(p, args)} }}" for i, (args, _) in enumerate(p.tests)]
        return {"main.rb": "\n".join(lines) + "\n"}


class Bash(Language):
    """Bash functions take strings and print their result, so the conventions are part of the prompt."""

    name, fences = "bash", ("bash", "sh", "shell", "zsh")
    notes = ("A bash function. Each argument is one positional parameter; a list argument is ONE parameter "
             "holding the elements one per line (an empty list is an empty string). Print the result to "
             "stdout: an integer in decimal, a boolean as `true` or `false`, a string as is, a list one "
             "element per line (nothing for an empty list). Use only bash and coreutils.")
    TYPES = {"int": "integer", "str": "string", "bool": "boolean", "list[int]": "list of integers",
             "list[str]": "list of strings"}

    def signature(self, p):
        doc = [f"# ${i + 1}: {a.name} ({self.TYPES[a.type]})" for i, a in enumerate(p.params)]
        doc.append(f"# prints: {self.TYPES[p.returns]}")
        return "\n".join(doc) + f"\n{self.fn(p)}() {{ ... }}"

    def literal(self, value, t):
        text = "\n".join(map(str, value)) if t.startswith("list") else str(value).lower() if t == "bool" else str(value)
        return "$'" + text.replace("\\", "\\\\").replace("'", "\\'").replace("\n", "\\n") + "'"

    def call(self, p, args):
        return " ".join([self.fn(p)] + [self.literal(a, pr.type) for a, pr in zip(args, p.params)])

    def program(self, p, solution, marker):
        lines = [solution, ""]
        for i, (args, _) in enumerate(p.tests):
            encoded = "$(printf '%s' \"$cf_out\" | base64 -w0)"
            lines.append(f"cf_out=$({self.call(p, args)}); cf_rc=$?\n"
                         f"printf '%s %d %d %s\\n' '{marker}' {i} \"$cf_rc\" \"{encoded}\"")
        return {"main.sh": "\n".join(lines) + "\n"}


LANGUAGES: dict[str, Language] = {lang.name: lang for lang in (
    Python(), JavaScript(), TypeScript(), Java(), Cpp(), C(), Rust(), Go(), Ruby(), Bash())}
