// Text helpers the capture and netfilter code share, so that neither needs Foundation (the init step ships
// without it).

extension StringProtocol {
    /// The text without leading and trailing spaces and tabs (newlines stay).
    public var trimmingSpaces: String { trimmed { $0.isWhitespace && !$0.isNewline } }

    /// The text without leading and trailing whitespace, newlines included.
    public var trimmingWhitespace: String { trimmed { $0.isWhitespace } }

    func trimmed(_ drop: (Character) -> Bool) -> String {
        guard let first = firstIndex(where: { !drop($0) }), let last = lastIndex(where: { !drop($0) }) else {
            return ""
        }
        return String(self[first...last])
    }
}
