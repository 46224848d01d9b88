// Message building without iostreams: the extension shares its process with
// other C++ runtimes, and iostream/locale state is the part of libstdc++ that
// breaks when two of them meet (a segfault in std::ostringstream on the GPU
// image). std::to_string only uses the C library.
#pragma once

#include <string>
#include <type_traits>

namespace jax_moe {

inline void AppendPiece(std::string& s, const std::string& v) { s += v; }
inline void AppendPiece(std::string& s, const char* v) { s += v; }
inline void AppendPiece(std::string& s, char v) { s += v; }
template <typename T, typename = std::enable_if_t<std::is_arithmetic_v<T>>>
void AppendPiece(std::string& s, T v) {
  s += std::to_string(v);
}

// StrCat("a", 1, 'b') == "a1b".
template <typename... Pieces>
std::string StrCat(const Pieces&... pieces) {
  std::string s;
  (AppendPiece(s, pieces), ...);
  return s;
}

}  // namespace jax_moe
