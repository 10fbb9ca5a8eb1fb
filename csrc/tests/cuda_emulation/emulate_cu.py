"""Rewrites a CUDA source (csrc/cuda/<op>.cu) into C++ that cuda_emu.h runs on the CPU.

Only what C++ cannot express is rewritten, and every line keeps its number (a #line
directive names the .cu), so compiler errors and sanitizer reports point into the
kernel's own source:
  kernel<<<grid, block, smem, stream>>>(args)  ->  emu::launch(kernel, ...)(args)
  extern __shared__ T name[];                  ->  T* name = emu::dynamic_shared<T>(align);
  __shared__ T name[N];                        ->  auto& name = emu::static_shared<T[N]>(line);
  __launch_bounds__(n, ...) f(...) {           ->  f(...) { emu::check_launch_bounds(n, ...);
  asm volatile("mma.sync...m16n8k16..." ...)   ->  emu::mma_m16n8k16<type>(...)
  asm volatile("cp.async.cg.shared.global ...") ->  emu::cp_async(...) (and commit_group,
                                                  wait_group, wait_all: the PTX table)
  __CUDA_ARCH__                                ->  EMU_CUDA_ARCH
  the CUDA headers                             ->  cuda_emu.h
Anything else CUDA-only is an error that names it, so the emulation is extended
rather than a kernel edited.
    python emulate_cu.py KERNEL.cu OUT.cpp
"""
import os
import re
import sys

# Inline PTX the emulation implements: instruction -> (function, operands, line). The
# call gets the instruction's operands in the template's order, each %N as its asm
# operand's expression and each integer literal as written; operands says what each is:
# "o" an output ("=" or "+" constraint, passed as a pointer), "v" a value (an input
# register, an "n" immediate, a literal, or an output read back as an input). line:
# the asm's source line is passed last (the emulator's misuse reports name it).
MMA_OPERANDS = "oooo" + "v" * 10  # {d0..d3}, {a0..a3}, {b0, b1}, {c0..c3}
PTX = {
    "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32": ("emu::mma_m16n8k16<c10::BFloat16>", MMA_OPERANDS, False),
    "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32": ("emu::mma_m16n8k16<c10::Half>", MMA_OPERANDS, False),
    # Ampere's asynchronous copies (cuda_emu.h, "asynchronous copies"): [dst], [src], cp-size.
    "cp.async.commit_group": ("emu::cp_async_commit_group", "", True),
    "cp.async.wait_group": ("emu::cp_async_wait_group", "v", True),
    "cp.async.wait_all": ("emu::cp_async_wait_all", "", True),
}
for _cop in ("ca", "cg"):
    for _space in (".shared", ".shared::cta"):
        for _prefetch in ("", ".L2::64B", ".L2::128B", ".L2::256B"):
            PTX[f"cp.async.{_cop}{_space}.global{_prefetch}"] = (
                f"emu::cp_async<emu::kCpAsync{_cop.upper()}>", "vvv", True)
# CUDA headers and what replaces them.
HEADERS = {
    "ATen/cuda/CUDAContext.h": '#include "cuda_emu.h"',
    "c10/cuda/CUDAGuard.h": "",
    "cuda_runtime.h": '#include "cuda_emu.h"',
}
UNSUPPORTED = ["<<<", ">>>", "__shared__", "__launch_bounds__", "__constant__", "__CUDA_ARCH__",
               "asm", "__asm__", "texture", "surface", "cooperative_groups", "__managed__"]


class RewriteError(Exception):
    pass


def code_only(s):
    """s with comments and string/char literals blanked (newlines kept), same length."""
    out = list(s)
    i, n = 0, len(s)
    while i < n:
        if s.startswith("//", i):
            j = s.find("\n", i)
            j = n if j < 0 else j
        elif s.startswith("/*", i):
            j = s.find("*/", i + 2)
            j = n if j < 0 else j + 2
        elif s[i] in "\"'":
            q, j = s[i], i + 1
            while j < n and s[j] != q:
                j += 2 if s[j] == "\\" else 1
            j += 1
        else:
            i += 1
            continue
        for k in range(i, min(j, n)):
            if out[k] != "\n":
                out[k] = " "
        i = j
    return "".join(out)


def line_of(s, pos):
    return s.count("\n", 0, pos) + 1


def matching(code, open_pos, opening="(", closing=")"):
    depth = 0
    for k in range(open_pos, len(code)):
        if code[k] == opening:
            depth += 1
        elif code[k] == closing:
            depth -= 1
            if depth == 0:
                return k
    raise RewriteError(f"unbalanced {opening} at line {line_of(code, open_pos)}")


def split_top(code, text, sep):
    """text split at the separators of code (same positions) outside brackets."""
    parts, depth, start = [], 0, 0
    for k, ch in enumerate(code):
        if ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth -= 1
        elif depth == 0 and code.startswith(sep, k):
            parts.append(text[start:k])
            start = k + len(sep)
    parts.append(text[start:])
    return parts


def padded(replacement, original):
    """replacement followed by the newlines original spanned (line numbers kept)."""
    missing = original.count("\n") - replacement.count("\n")
    if missing < 0:
        raise RewriteError("a rewrite would add lines")
    return replacement + "\n" * missing


def c_string(literals):
    body = "".join(re.findall(r'"((?:[^"\\]|\\.)*)"', literals))
    return body.replace("\\n", "\n").replace("\\t", "\t").replace('\\"', '"')


def template_arguments(operands_text):
    """The instruction's operands in order: ("ref", N) for each %N, ("literal", text)
    for each integer literal (brackets and braces of the PTX syntax dropped)."""
    args = []
    for m in re.finditer(r"%(\d+)|(?<![\w.%])(\d+)(?![\w.])", operands_text):
        args.append(("ref", int(m.group(1))) if m.group(1) else ("literal", m.group(2)))
    return args


def rewrite_asm(src, code, start, edits):
    paren = code.index("(", start)
    close = matching(code, paren)
    semi = code.index(";", close)
    inner_code, inner = code[paren + 1:close], src[paren + 1:close]
    line = line_of(src, start)
    # template : outputs : inputs : clobbers (each section after the template optional;
    # "::" is an empty outputs section, not a C++ scope).
    sections = split_top(inner_code, inner, ":")
    template = c_string(sections[0])
    statements = [t.strip() for t in template.split(";") if t.strip()]
    if len(statements) != 1:
        raise RewriteError(f"asm at line {line}: one PTX instruction per asm statement, "
                           f"found {len(statements)}")
    instruction, operands_text = (statements[0].split(None, 1) + [""])[:2]
    if instruction not in PTX:
        raise RewriteError(f"no emulation of the PTX instruction {instruction!r} "
                           f"(asm at line {line}); add it to cuda_emu.h and PTX")
    function, kinds, pass_line = PTX[instruction]
    operands = []  # (constraint, expression) of %0, %1, ...: the outputs, then the inputs
    for section in sections[1:3]:
        for op in split_top(code_only(section), section, ","):
            if not op.strip():
                continue
            m = re.fullmatch(r'\s*"([^"]*)"\s*\((.*)\)\s*', op, re.S)
            if not m:
                raise RewriteError(f"asm operand {op.strip()!r} at line {line}")
            operands.append((m.group(1), " ".join(m.group(2).split())))
    arguments = template_arguments(operands_text)
    if len(arguments) != len(kinds):
        raise RewriteError(f"{instruction} at line {line}: {len(arguments)} operands, "
                           f"expected {len(kinds)}")
    args = []
    for kind, (what, value) in zip(kinds, arguments):
        if what == "literal":
            if kind == "o":
                raise RewriteError(f"{instruction} at line {line}: literal {value} as an output")
            args.append(value)
            continue
        if value >= len(operands):
            raise RewriteError(f"{instruction} at line {line}: %{value} names no operand")
        constraint, expr = operands[value]
        is_output = "=" in constraint or "+" in constraint
        if kind == "o":
            if not is_output:
                raise RewriteError(f"{instruction}: operand %{value} is not an output")
            args.append(f"&({expr})")
        else:
            if "=" in constraint and "+" not in constraint:
                raise RewriteError(f"{instruction}: operand %{value} is written, not read")
            args.append(f"({expr})")
    if pass_line:
        args.append("__LINE__")
    original = src[start:semi + 1]
    edits.append((start, semi + 1, padded(f"{function}({', '.join(args)});", original)))


def kernel_expression_start(code, end):
    """Start of the kernel name (with template arguments) that ends before end."""
    k = end
    while k > 0 and code[k - 1].isspace():
        k -= 1
    if code[k - 1] == ">":
        depth = 0
        while k > 0:
            k -= 1
            if code[k] == ">":
                depth += 1
            elif code[k] == "<":
                depth -= 1
                if depth == 0:
                    break
    while k > 0 and (code[k - 1].isalnum() or code[k - 1] in "_:"):
        k -= 1
    return k


def rewrite(src, path):
    code = code_only(src)
    edits = []

    for m in re.finditer(r'^[ \t]*#[ \t]*include[ \t]*([<"])([^>"]+)[>"]', src, re.M):
        header = m.group(2)
        if header in HEADERS:
            edits.append((m.start(), m.end(), HEADERS[header]))
        elif header.startswith(("cuda", "ATen/cuda/", "c10/cuda/", "cub/", "thrust/", "mma.h")):
            raise RewriteError(f"line {line_of(src, m.start())}: no emulation of <{header}>")
        elif m.group(1) == '"' and header.startswith("../"):
            edits.append((m.start(), m.end(), f'#include "{header[3:]}"'))

    for m in re.finditer(r"\b__CUDA_ARCH__\b", code):
        edits.append((m.start(), m.end(), "EMU_CUDA_ARCH"))

    for m in re.finditer(r"\b(?:asm|__asm__)\s*(?:volatile|__volatile__)?\s*\(", code):
        rewrite_asm(src, code, m.start(), edits)

    for m in re.finditer(r"\bextern\s+__shared__\s+(?:__align__\s*\(\s*(\d+)\s*\)\s*)?"
                         r"([A-Za-z_][\w:<>, ]*?)\s+(\w+)\s*\[\s*\]\s*;", code):
        align, type_, name = m.group(1) or "16", m.group(2), m.group(3)
        edits.append((m.start(), m.end(),
                      padded(f"{type_}* {name} = emu::dynamic_shared<{type_}>({align});",
                             src[m.start():m.end()])))

    lines_with_static = set()
    for m in re.finditer(r"(?<!extern )\b__shared__\s+(?:__align__\s*\(\s*\d+\s*\)\s*)?"
                         r"([A-Za-z_][\w:<>, ]*?)\s+(\w+)\s*((?:\[[^\]]+\]\s*)*);", code):
        if re.search(r"\bextern\s+$", code[max(0, m.start() - 20):m.start()]):
            continue
        line = line_of(src, m.start())
        if line in lines_with_static:
            raise RewriteError(f"line {line}: one __shared__ declaration per line, please")
        lines_with_static.add(line)
        type_, name, dims = m.group(1), m.group(2), "".join(m.group(3).split())
        edits.append((m.start(), m.end(),
                      padded(f"auto& {name} = emu::static_shared<{type_}{dims}>(__LINE__);",
                             src[m.start():m.end()])))

    for m in re.finditer(r"\b__launch_bounds__\s*\(", code):
        close = matching(code, m.end() - 1)
        bounds = " ".join(src[m.end():close].split())
        body = code.index("{", close)
        edits.append((m.start(), close + 1, padded("", src[m.start():close + 1])))
        edits.append((body + 1, body + 1, f" emu::check_launch_bounds({bounds});"))

    for m in re.finditer(r"<<<", code):
        start = kernel_expression_start(code, m.start())
        end_config = code.index(">>>", m.end())
        call = end_config + 3
        while code[call].isspace():
            call += 1
        if code[call] != "(":
            raise RewriteError(f"line {line_of(src, m.start())}: <<<...>>> not followed by (")
        kernel = " ".join(src[start:m.start()].split())
        config = " ".join(src[m.end():end_config].split())
        if not kernel:
            raise RewriteError(f"line {line_of(src, m.start())}: no kernel before <<<")
        replacement = (f'emu::launch({kernel}, "{kernel}", __FILE__, __LINE__, {config})(')
        edits.append((start, call + 1, padded(replacement, src[start:call + 1])))

    edits.sort()
    for (a0, a1, _), (b0, b1, _) in zip(edits, edits[1:]):
        if b0 < a1:
            raise RewriteError(f"overlapping rewrites at lines {line_of(src, a0)} and {line_of(src, b0)}")
    out = src
    for a, b, text in reversed(edits):
        out = out[:a] + text + out[b:]

    rest = code_only(out)
    for word in UNSUPPORTED:
        pattern = re.escape(word) if not word[0].isalpha() and word[0] != "_" else rf"\b{word}\b"
        hit = re.search(pattern, rest)
        if hit:
            raise RewriteError(f"line {line_of(rest, hit.start())}: no emulation of {word!r}")
    assert out.count("\n") == src.count("\n"), "line numbers must survive the rewrite"
    # Which file the checks ran (they print it: the mutation test makes sure).
    tail = "\nnamespace emu { [[maybe_unused]] static const char* const kernel_source = __FILE__; }\n"
    return f'#line 1 "{os.path.abspath(path)}"\n' + out + tail


def main():
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    source, target = sys.argv[1:]
    try:
        text = rewrite(open(source).read(), source)
    except RewriteError as e:
        sys.exit(f"emulate_cu.py: {source}: {e}")
    tmp = target + ".tmp"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, target)


if __name__ == "__main__":
    main()
